package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// upsertDelivery keeps one row per queued message: its latest state.
const upsertDelivery = `INSERT INTO deliveries
	(queue_id, message_id, ticket, channel, principal, recipients, status, attempts, last_reply, time_ms, created_ms, agent)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
	ON CONFLICT (queue_id) DO UPDATE SET
		message_id = excluded.message_id, ticket = excluded.ticket, channel = excluded.channel,
		principal = excluded.principal, agent = excluded.agent, recipients = excluded.recipients, status = excluded.status,
		attempts = excluded.attempts, last_reply = excluded.last_reply, time_ms = excluded.time_ms`

// upsertRecipient keeps one row per recipient of a queued message: its latest state.
const upsertRecipient = `INSERT INTO delivery_recipients
	(queue_id, address, address_key, status, code, enhanced, reply, time_ms)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
	ON CONFLICT (queue_id, address_key) DO UPDATE SET
		address = excluded.address, status = excluded.status, code = excluded.code,
		enhanced = excluded.enhanced, reply = excluded.reply, time_ms = excluded.time_ms`

// maxLogBatch bounds one transaction of the delivery log writer: at a few thousand rows a second it
// is about logLinger's worth, so batches end by time, not by size.
const maxLogBatch = 1024

// logLinger is how long the writer gathers rows nobody waits for before it writes them: a busy relay
// then writes the "queued" and the "delivered" row of most messages in the same transaction, where they
// become one upsert, and pays the transaction's fixed cost (locks, WAL frames) once for many messages.
// It must outlast a typical delivery for the two rows to meet: at 20 ms (with 256-row batches) none
// did, and the log cost 4 upserts per message instead of 2 — 15% of mailgate's CPU against 8% in
// `PROFILE=pprof scripts/bench.sh`. The price is that a row reaches the log (and GET /deliveries) up
// to this much later; the queue, not the log, is what survives a crash.
const logLinger = 250 * time.Millisecond

// deliveryLogWriter group-commits the delivery log. Every submission and every delivery attempt writes
// a row, from many goroutines at once; one transaction per row made the log the relay's largest CPU
// cost (statement parsing and WAL frames per row). One goroutine owns the writer connection: it takes
// whatever requests are waiting (up to maxLogBatch), writes them in one transaction with a prepared
// statement, and answers each caller with the transaction's result. A row somebody waits for
// (LogDelivery) is written at once with whatever else is waiting, so batching adds it no latency; rows
// nobody waits for (LogDeliveryLater: every row of the queue) linger up to logLinger to share one
// transaction, and a message's rows in one batch become one upsert. Rows of one message keep their
// order (queued before delivered) because requests are applied in arrival order.
type deliveryLogWriter struct {
	db *sql.DB
	// upsert is prepared once: parsing the statement for every transaction was most of the writer's
	// cost. The writer pool has one connection, so each transaction reuses it as is.
	upsert     *sql.Stmt
	upsertRcpt *sql.Stmt
	reqs       chan logRequest
	done       chan struct{}
	// mu guards closed: senders hold it shared while they enqueue, close takes it exclusively, so no
	// request is ever sent on the closed channel.
	mu     sync.RWMutex
	closed bool
}

// logRequest is one row to write; the writer answers on result (LogDelivery) or, for a row nobody
// waits for, calls onError if it failed (LogDeliveryLater) — no goroutine per row.
type logRequest struct {
	r       relay.DeliveryRecord
	result  chan error
	onError func(relay.DeliveryRecord, error)
}

func newDeliveryLogWriter(db *sql.DB) (*deliveryLogWriter, error) {
	upsert, err := db.Prepare(upsertDelivery)
	if err != nil {
		return nil, err
	}
	upsertRcpt, err := db.Prepare(upsertRecipient)
	if err != nil {
		upsert.Close()
		return nil, err
	}
	w := &deliveryLogWriter{db: db, upsert: upsert, upsertRcpt: upsertRcpt, reqs: make(chan logRequest, maxLogBatch), done: make(chan struct{})}
	go w.run()
	return w, nil
}

func (w *deliveryLogWriter) run() {
	defer close(w.done)
	for first := range w.reqs {
		batch := []logRequest{first}
		// Rows nobody waits for linger (logLinger); a caller waiting for its row ends the lingering.
		var linger <-chan time.Time
		if first.result == nil {
			linger = time.After(logLinger)
		}
	gather:
		for len(batch) < maxLogBatch {
			var r logRequest
			var ok bool
			if linger == nil {
				select {
				case r, ok = <-w.reqs:
				default:
					break gather
				}
			} else {
				select {
				case r, ok = <-w.reqs:
				case <-linger:
					break gather
				}
			}
			if !ok {
				break
			}
			batch = append(batch, r)
			if r.result != nil {
				linger = nil
			}
		}
		err := w.write(batch)
		for _, r := range batch {
			switch {
			case r.result != nil:
				r.result <- err
			case err != nil && r.onError != nil:
				r.onError(r.r, err)
			}
		}
	}
}

// logWriteTimeout bounds one batch: a database that stops answering (a network partition) must not
// hold the writer, and every row queued behind it, until TCP gives up.
const logWriteTimeout = 30 * time.Second

func (w *deliveryLogWriter) write(batch []logRequest) error {
	ctx, cancel := context.WithTimeout(context.Background(), logWriteTimeout)
	defer cancel()
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return storeErr(err)
	}
	stmt := tx.StmtContext(ctx, w.upsert)
	rstmt := tx.StmtContext(ctx, w.upsertRcpt)
	// A message's rows in one batch become one upsert: its last row, created when its first was.
	last := make(map[string]int, len(batch))
	created := make(map[string]int64, len(batch))
	for i, req := range batch {
		last[req.r.QueueID] = i
		if _, ok := created[req.r.QueueID]; !ok {
			created[req.r.QueueID] = ms(req.r.Time)
		}
	}
	for i, req := range batch {
		r := req.r
		if last[r.QueueID] != i {
			continue
		}
		rcpts, err := json.Marshal(r.Recipients)
		if err != nil {
			_ = tx.Rollback()
			return storeErr(err)
		}
		if _, err := stmt.ExecContext(ctx, r.QueueID, r.MessageID, r.Ticket, r.Channel, r.Principal, string(rcpts),
			r.Status, r.Attempts, r.LastReply, ms(r.Time), created[r.QueueID], r.Agent); err != nil {
			_ = tx.Rollback()
			return storeErr(err)
		}
		for _, st := range r.States {
			when := st.Time
			if when.IsZero() {
				when = r.Time
			}
			if _, err := rstmt.ExecContext(ctx, r.QueueID, st.Address, addressKey(st.Address), st.Status, st.Code,
				string(st.Enhanced), st.Reply, ms(when)); err != nil {
				_ = tx.Rollback()
				return storeErr(err)
			}
		}
	}
	return storeErr(tx.Commit())
}

// close stops the writer after it has written every request already made.
func (w *deliveryLogWriter) close() error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.reqs)
	}
	w.mu.Unlock()
	<-w.done
	return errors.Join(w.upsert.Close(), w.upsertRcpt.Close())
}

// enqueue hands a request to the writer, unless the store is closed.
func (w *deliveryLogWriter) enqueue(ctx context.Context, req logRequest) error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.closed {
		return storeErr(errors.New("store closed"))
	}
	select {
	case w.reqs <- req:
		return nil
	case <-ctx.Done():
		return storeErr(ctx.Err())
	}
}

// LogDelivery records the latest state of a queued message (an upsert by queue id). It returns once
// the row is committed; concurrent callers share one transaction.
func (s *tables) LogDelivery(ctx context.Context, r relay.DeliveryRecord) error {
	if r.QueueID == "" {
		return badInput("delivery record without a queue id")
	}
	req := logRequest{r: r, result: make(chan error, 1)}
	if err := s.log.enqueue(ctx, req); err != nil {
		return err
	}
	select {
	case err := <-req.result:
		return err
	case <-ctx.Done():
		return storeErr(ctx.Err())
	}
}

// LogDeliveryLater queues a delivery-log row and returns at once; onError (if not nil) hears of a
// failure, from the writer goroutine. Rows still apply in the order they were queued, so a later row of
// the same message wins. The queue uses it for every row, so neither a client's 250 nor a delivery
// worker waits on the log.
func (s *tables) LogDeliveryLater(r relay.DeliveryRecord, onError func(relay.DeliveryRecord, error)) {
	fail := func(err error) {
		if onError != nil {
			onError(r, err)
		}
	}
	if r.QueueID == "" {
		fail(badInput("delivery record without a queue id"))
		return
	}
	if err := s.log.enqueue(context.Background(), logRequest{r: r, onError: onError}); err != nil {
		fail(err)
	}
}
