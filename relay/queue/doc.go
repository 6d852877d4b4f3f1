// Package queue is mailgate's durable spool and delivery scheduler: a message accepted by submission
// is on disk (fdatasync done) before the client hears 250, and stays there until every one of its
// recipients is delivered or bounced.
//
// # Files
//
// One spool directory per instance (Options.Dir):
//
//	lock                 flock(2)ed by the running Queue: two processes never share a spool
//	seg/<seq>.seg        segment files (seq: 16 hex digits, increasing), each Options.SegmentBytes
//	                     long (default 64 MiB), zero-filled when made; records are appended to the
//	                     newest
//	big/<id>.eml         a body larger than Options.LargeMessageBytes (default 1 MiB), in a file of
//	                     its own
//	quarantine/<name>    records that are whole but cannot be used; kept for an operator, never
//	                     delivered
//
// The spool is log-structured: nothing is rewritten in place, and no file is created per message. A
// segment holds framed records, each a 9-byte header — payload length (4 bytes, little-endian), CRC32C
// (Castagnoli) of the kind byte and the payload (4), kind (1) — and its payload:
//
//	B  body      queue id (17 bytes), the composed RFC 5322 message (CRLF)
//	C  commit    distance back to the entry's B record in the same segment (8 bytes; 0 when the body
//	             is in big/), then the metadata as JSON: the relay.Envelope, per-recipient status,
//	             attempts, next attempt, errors (see Entry)
//	U  update    the metadata after an attempt
//	R  remove    queue id: every recipient is final, or the message was dropped
//
// An entry exists from its C record: the B record before it alone is nothing. Queue ids are 17
// characters of a sortable base32 alphabet ([0-9a-v]): 13 for the creation time in nanoseconds
// (strictly increasing within a process), 4 random. They sort by age and are safe as file names.
//
// # Commit
//
// Submission streams the composed body into a Draft, which keeps it in memory (in the buffer it will
// be written from) up to LargeMessageBytes. Commit then appends the B and C records with one write
// and waits for a sync that covers them. Syncs are group commits: one fdatasync per segment written,
// shared by every commit whose bytes it covers. A commit waits for the sync in flight if that started
// after its write, otherwise for the next, which starts the moment the one in flight ends and covers
// everything written until then; no timer delays a sync, and no commit waits behind more than one sync
// that does not cover it. Only then does Commit return the id the client hears in its 250.
//
// A larger body goes to big/<id>.eml as it is written, so its fsync (40 MB takes a while) is paid by
// its own commit, never by the small ones sharing the segment's fdatasync: Commit fsyncs the file,
// then big/ (the name must be durable before anything points to it; concurrent ones share that fsync),
// then appends a C record and waits for the group sync.
//
// Segments are made ahead of need by a background goroutine — created, zero-filled, fsynced, and the
// seg/ directory fsynced — so no commit waits for a file creation or a directory fsync, and writing
// into blocks that already exist needs no journal commit at each fdatasync (measured on ext4: 100 µs
// for write(10 KiB)+fdatasync against 200–225 µs in a fallocated or growing file).
//
// Status changes are appended records too: U after an attempt that leaves recipients pending, R when
// none is left (or on Drop). They do not wait for a sync: the next commit's sync covers them, or the
// background flush within a second. After a crash an older state may come back, which only repeats an
// attempt — at-least-once delivery, as every MTA does — and never loses a recipient.
//
// If an fdatasync ever fails, the page cache no longer tells what is on disk, so every later commit
// fails (451) until the process restarts and rescans the spool.
//
// # Space
//
// Each segment counts the entries whose latest C record it holds. Segments are deleted oldest first,
// once none of their entries is live and the records that freed them are durable: a newer segment may
// hold the R record (or the copy) that ended an older one's entry, so it must outlive it. A big body is
// unlinked once its R record is durable. When the segments on disk exceed twice the bytes their live
// entries need plus two segments — entries deferred for days would otherwise keep every segment
// written since on disk — the live entries of the oldest segment are copied forward (B and C records
// appended again, from the scheduler's once-a-second tick, never while an attempt is running) and the
// oldest segment goes.
//
// When the disk is full a commit fails with an error that wraps ENOSPC (submission answers 452 4.3.1):
// making the next segment fails. Commits leave a sixteenth of the current segment to status records
// when no next segment exists, so the deliveries that free space can still be recorded; an entry
// whose R record cannot be written is still released, since deleting its segment removes it as surely
// (until then a crash repeats its delivery). A spool found full at start starts anyway.
//
// # Start-up
//
// New reads every segment in order, each up to its first record that is not whole — a length past the
// end, a CRC mismatch, an unknown kind, or the zeros after the last record — and replays the records:
// C sets an entry (and where its body is), U replaces its metadata, R ends it. A torn tail is the
// write a crash cut short: no client was told 250 for it. A whole record that cannot be used — metadata
// of an unknown version, a C without its B, a big body gone — is copied to quarantine/ (logged,
// counted in metrics.QueueQuarantined, never fatal). Unreferenced files in big/ (commits cut short,
// removals done) are deleted, every segment is fdatasynced (what was read may have been only in the
// page cache of a killed process) before anything is deleted because of it, entries whose recipients
// are all final are removed, and every other entry is scheduled at its recorded next attempt time (at
// once when that is past). Appends continue in the last segment, its tail after the last whole record
// zeroed first, or in a new one.
//
// # Scheduling
//
// Each transport name (relay.Envelope.Transport) has its own pool of workers, so a slow upstream does
// not hold up another. A committed message goes straight to its pool's ready list (no polling delay);
// deferred ones wait in a time-ordered heap. The transport is looked up by name at each attempt through
// the Transports interface, so a configuration reload that swaps transports takes effect at the next
// attempt. An attempt reads the body straight from its segment (positioned reads of a descriptor kept
// open; the segment stays while a reader is open). It sees only the recipients still pending; each
// recipient's error in relay.Result decides its fate through relay.Classify, whose fault it is (DESIGN
// §4): nil is delivered; the address's fault bounces and suppresses; the message's fault and an unmet
// Force TLS bounce without suppressing; a fault of mailgate's or the relay's setup, and anything
// temporary, defers. Setup and Force TLS faults also raise an Alert per transport (Queue.Alerts, for
// /readyz, with the transport's remedy; metrics.DeliveryAlerts), cleared by the next delivery that
// proves them gone. Retries back off exponentially with jitter (or follow an explicit schedule), never
// sooner than a relay.Error.RetryAfter asks; RFC 5321 §4.5.4.1 asks senders to keep trying for 4–5
// days, which is the default maximum lifetime, after which the remaining recipients bounce with 5.4.7
// (RFC 3463: delivery time expired) — never suppressed: waiting out an outage, or mailgate's own wrong
// password, says nothing about the address. An unknown transport name defers (a configuration mistake
// must never bounce a customer's address). A bounce the Bounces store could not take stays on the
// entry (Recipient.Unrecorded), which stays queued until the record is written at a later attempt.
// Policy (retry, lifetime, attempt timeout, worker counts) may change while the queue runs
// (SetPolicy); each transport gets no more workers than it has connections to use.
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
// Each attempt counts per-recipient outcomes in metrics.DeliveryAttempts{transport,result}, failures by
// fault in metrics.DeliveryFaults, deferrals by reason in metrics.DeliveryDeferrals, acceptance-to-
// delivery time in metrics.DeliveryLatency, times the Deliver call in metrics.DeliveryDuration, counts
// bounces by relay.Error.Reason ("upstream" when empty, "expired" for the lifetime) in metrics.Bounces,
// records each bounce (with its fault, and whether it suppresses) through Bounces, logs one slog line
// per outcome (queued, delivered, deferred, bounced, dropped) with queue_id, channel and the recipient
// count, and upserts the delivery log through DeliveryLog with the message's status: queued, deferred,
// delivered, bounced, partial (some delivered, some bounced) or dropped. A DeliveryLog that can take a
// row without a wait (relay/store's group-committing writer) gets every row that way, so neither a
// client's 250 nor a worker waits on the log; rows keep their order, so "queued" still precedes the
// first outcome. Drop removes a message without bouncing its recipients: dropping is an operator's
// decision about one message, not evidence that an address is bad, so nothing is suppressed.
//
// Delivery is at-least-once: an attempt that succeeded upstream but was not recorded (crash, shutdown
// cut short) is attempted again.
package queue
