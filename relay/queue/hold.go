package queue

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// ErrHeld is wrapped by RetryNow for a held message: releasing it is the operator's explicit step.
var ErrHeld = errors.New("queue entry is held")

// Hold puts a message on hold (mailgate queue hold), as Postfix's hold queue does: it stays in the
// spool, durable and listed, and is not attempted until Release. A message being delivered right now
// is held when the attempt ends (recipients that attempt reached got it). The hold survives a restart.
func (q *Queue) Hold(id string) error {
	q.mu.Lock()
	e, ok := q.entries[id]
	if !ok {
		q.mu.Unlock()
		return notFound(id)
	}
	switch e.state {
	case stateHeld:
		q.mu.Unlock()
		return nil
	case stateInflight:
		e.hold = true
		q.mu.Unlock()
		q.log.Info("hold requested during delivery", "queue_id", id)
		return nil
	case stateWaiting:
		q.waiting.remove(e)
	}
	// A ready entry's place in its pool's list is skipped by the worker that pops it.
	e.state = stateHeld
	next := e.data.clone()
	next.Held = true
	e.data = next
	q.mu.Unlock()
	q.log.Info("held", "queue_id", id, "channel", next.Envelope.Channel)
	return q.persistHold(&next)
}

// Release ends a hold: the message is attempted at once.
func (q *Queue) Release(id string) error {
	q.mu.Lock()
	e, ok := q.entries[id]
	if !ok {
		q.mu.Unlock()
		return notFound(id)
	}
	if e.state == stateInflight && e.hold {
		e.hold = false
		q.mu.Unlock()
		return nil
	}
	if e.state != stateHeld {
		q.mu.Unlock()
		return nil // not held: nothing to release
	}
	next := e.data.clone()
	next.Held = false
	e.data = next
	q.scheduleLocked(e, time.Now())
	q.mu.Unlock()
	q.log.Info("released", "queue_id", id, "channel", next.Envelope.Channel)
	return q.persistHold(&next)
}

func (q *Queue) persistHold(e *Entry) error {
	if err := q.spool.replaceMeta(e); err != nil {
		return relay.Wrap(err, 451, relay.CodeTempLocal, "queue", "could not record the hold in the spool")
	}
	return nil
}

// Header returns the header section of a queued message as it will be sent (mailgate queue show):
// the composed message's fields, at most maxBytes of them.
func (q *Queue) Header(id string, maxBytes int64) (textproto.MIMEHeader, error) {
	q.mu.Lock()
	_, ok := q.entries[id]
	q.mu.Unlock()
	if !ok {
		return nil, notFound(id)
	}
	body, err := q.spool.open(id)
	if err != nil {
		return nil, fmt.Errorf("queue: open %s: %w", id, err)
	}
	defer body.Close()
	r := textproto.NewReader(bufio.NewReader(io.LimitReader(body, maxBytes)))
	h, err := r.ReadMIMEHeader()
	if err != nil && len(h) == 0 {
		return nil, fmt.Errorf("queue: header of %s: %w", id, err)
	}
	return h, nil
}
