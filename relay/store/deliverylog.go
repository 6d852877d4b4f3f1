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
	(queue_id, message_id, ticket, channel, principal, recipients, status, attempts, last_reply, time_ms, created_ms)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
	ON CONFLICT (queue_id) DO UPDATE SET
		message_id = excluded.message_id, ticket = excluded.ticket, channel = excluded.channel,
		principal = excluded.principal, recipients = excluded.recipients, status = excluded.status,
		attempts = excluded.attempts, last_reply = excluded.last_reply, time_ms = excluded.time_ms`

// maxLogBatch bounds one transaction of the delivery log writer.
const maxLogBatch = 256

// deliveryLogWriter group-commits the delivery log. Every submission and every delivery attempt writes
// a row, from many goroutines at once; one transaction per row made the log the relay's largest CPU
// cost (statement parsing and WAL frames per row). One goroutine owns the writer connection: it takes
// whatever requests are waiting (up to maxLogBatch), writes them in one transaction with a prepared
// statement, and answers each caller with the transaction's result. An idle relay writes a single row
// at once, so batching adds no latency; a busy one shares the cost. Rows of one message keep their
// order (queued before delivered) because requests are applied in arrival order.
type deliveryLogWriter struct {
	db *sql.DB
	// upsert is prepared once: parsing the statement for every transaction was most of the writer's
	// cost. The writer pool has one connection, so each transaction reuses it as is.
	upsert *sql.Stmt
	reqs   chan logRequest
	done   chan struct{}
	// mu guards closed: senders hold it shared while they enqueue, close takes it exclusively, so no
	// request is ever sent on the closed channel.
	mu     sync.RWMutex
	closed bool
}

type logRequest struct {
	r      relay.DeliveryRecord
	result chan error
}

func newDeliveryLogWriter(db *sql.DB) (*deliveryLogWriter, error) {
	upsert, err := db.Prepare(upsertDelivery)
	if err != nil {
		return nil, err
	}
	w := &deliveryLogWriter{db: db, upsert: upsert, reqs: make(chan logRequest, maxLogBatch), done: make(chan struct{})}
	go w.run()
	return w, nil
}

func (w *deliveryLogWriter) run() {
	defer close(w.done)
	for first := range w.reqs {
		batch := []logRequest{first}
	drain:
		for len(batch) < maxLogBatch {
			select {
			case r, ok := <-w.reqs:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		err := w.write(batch)
		for _, r := range batch {
			r.result <- err
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
	for _, req := range batch {
		r := req.r
		rcpts, err := json.Marshal(r.Recipients)
		if err != nil {
			_ = tx.Rollback()
			return storeErr(err)
		}
		t := ms(r.Time)
		if _, err := stmt.ExecContext(ctx, r.QueueID, r.MessageID, r.Ticket, r.Channel, r.Principal, string(rcpts),
			r.Status, r.Attempts, r.LastReply, t); err != nil {
			_ = tx.Rollback()
			return storeErr(err)
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
	return w.upsert.Close()
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
// failure. Rows still apply in the order they were queued, so a later LogDelivery of the same message
// wins. Submission uses it for the "queued" row, so no client waits on the log before its 250.
func (s *tables) LogDeliveryLater(r relay.DeliveryRecord, onError func(error)) {
	if r.QueueID == "" {
		if onError != nil {
			onError(badInput("delivery record without a queue id"))
		}
		return
	}
	req := logRequest{r: r, result: make(chan error, 1)}
	if err := s.log.enqueue(context.Background(), req); err != nil {
		if onError != nil {
			onError(err)
		}
		return
	}
	if onError != nil {
		go func() {
			if err := <-req.result; err != nil {
				onError(err)
			}
		}()
	}
}
