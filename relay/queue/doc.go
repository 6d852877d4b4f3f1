// Package queue is mailgate's durable spool and delivery scheduler: a message accepted by submission
// is on disk (file and directory fsynced) before the client hears 250, and stays there until every one
// of its recipients is delivered or bounced.
//
// # Files
//
// One spool directory per instance (Options.Dir):
//
//	lock               flock(2)ed by the running Queue: two processes never share a spool
//	tmp/<id>.json      a metadata file being written (garbage after a crash)
//	msg/<id>.eml       a message body (the composed RFC 5322 message, CRLF): a draft's while it is
//	                   written, a committed message's once its metadata exists

//	msg/<id>.json      its metadata: the relay.Envelope, per-recipient status, attempts, next attempt
//	quarantine/<id>.*  entries whose metadata could not be read; kept for an operator, never delivered
//
// The metadata file is the commit marker: an entry exists exactly when msg/<id>.json exists. Queue ids
// are 17 characters of a sortable base32 alphabet ([0-9a-v]): 13 for the creation time in nanoseconds
// (strictly increasing within a process), 4 random. They sort by age and are safe as file names.
//
// # fsync order
//
// Commit (the only step a client waits on):
//  1. write the body to msg/<id>.eml (buffered) — in place: without metadata it is no entry, so it
//     needs no temporary name, and each commit saves a rename;
//  2. fsync the body and, at the same time, write and fsync the metadata in tmp/<id>.json (concurrent
//     fsyncs share one journal commit, so the client waits for one instead of two in a row);
//  3. once both are on disk, rename the metadata to msg/<id>.json — the entry now exists;
//  4. fsync msg/ — the body's creation and the metadata's rename are now durable — and only then
//     return the id.
//
// An update after a delivery attempt writes tmp/<id>.json, fsyncs it and renames it over
// msg/<id>.json. Removal unlinks msg/<id>.json first (the entry ends), then msg/<id>.eml. Neither waits
// for a directory fsync: after a crash the older metadata (or the removed entry) may come back, which
// only repeats an attempt — at-least-once delivery, as every MTA does — and never loses a recipient;
// the next commit's msg/ fsync makes them durable anyway. So a fully delivered message costs two file
// fsyncs (body, metadata) and one shared directory fsync; a deferred attempt costs one file fsync.
//
// tmp/ itself is never fsynced: nothing in it is ever needed after a crash, so whether a rename out of it
// is remembered there does not matter (only the new name in msg/ must be durable, and that is what the
// msg/ fsync makes so). Directory fsyncs of concurrent commits are coalesced: a caller waits for one
// fsync that started after its own renames, so twenty sessions committing at once share a few fsyncs.
// If a directory fsync ever fails, the page cache no longer tells what is on disk, so every later commit
// fails (451) until the process restarts and rescans the spool.
//
// # Start-up
//
// New removes everything in tmp/, deletes a msg/<id>.eml that has no metadata (a commit cut short by a
// crash: the client never got its 250), moves metadata that cannot be read or parsed — and a metadata
// file whose body is gone — to quarantine/ (logged, counted in metrics.QueueQuarantined, never fatal),
// removes entries whose recipients are all final, and schedules every other entry at its recorded next
// attempt time (at once when that is past).
//
// # Scheduling
//
// Each transport name (relay.Envelope.Transport) has its own pool of workers, so a slow upstream does
// not hold up another. A committed message goes straight to its pool's ready list (no polling delay);
// deferred ones wait in a time-ordered heap. The transport is looked up by name at each attempt through
// the Transports interface, so a configuration reload that swaps transports takes effect at the next
// attempt. An attempt sees only the recipients still pending; each recipient's error in relay.Result
// decides its fate: nil is delivered, a permanent error (5xx, relay.IsPermanent) bounces it, anything
// else defers it. Retries back off exponentially with jitter (or follow an explicit schedule), never
// sooner than a relay.Error.RetryAfter asks; RFC 5321 §4.5.4.1 asks senders to keep trying for 4–5
// days, which is the default maximum lifetime, after which the remaining recipients bounce with 5.4.7
// (RFC 3463: delivery time expired). An unknown transport name defers (a configuration mistake must
// never bounce a customer's address).
//
// A Gate (the shared store) holds attempts back while it reports the store unreachable: a worker keeps
// its entry, makes no attempt and spends no backoff, and delivers as soon as the store is back, so an
// outcome is never reached that could not be recorded (a bounce, a shared budget).
//
// relay.Result.Errs must hold exactly one entry per recipient of the attempt (nil = delivered); a
// result of any other length is treated as a temporary failure of every recipient and logged as a
// transport bug, because guessing would either lose mail or bounce it.
//
// # Reports
//
// Each attempt counts per-recipient outcomes in metrics.DeliveryAttempts{transport,result}, times the
// Deliver call in metrics.DeliveryDuration, counts bounces by relay.Error.Reason ("upstream" when empty,
// "expired" for the lifetime) in metrics.Bounces, records each bounce through Bounces, logs one slog line
// per outcome (queued, delivered, deferred, bounced, dropped) with queue_id, channel and the recipient
// count, and upserts the delivery log through DeliveryLog with the message's status: queued, deferred,
// delivered, bounced, partial (some delivered, some bounced) or dropped. The "queued" row is handed to
// a DeliveryLog that can take it without a wait (relay/store's group-committing writer), so no client
// waits on the log for its 250; rows keep their order, so it still precedes the first outcome. Drop removes a message without
// bouncing its recipients: dropping is an operator's decision about one message, not evidence that an
// address is bad, so nothing is suppressed.
//
// Delivery is at-least-once: an attempt that succeeded upstream but was not recorded (crash, shutdown
// cut short) is attempted again.
package queue
