package queue

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// gate is a Gate a test opens and closes.
type gate struct {
	closed atomic.Bool
	asked  atomic.Int32
}

func (g *gate) Unavailable() error {
	g.asked.Add(1)
	if g.closed.Load() {
		return errors.New("store unreachable")
	}
	return nil
}

// TestGateHoldsDeliveries: while the Gate reports the store unavailable no attempt is made (none
// spent, nothing bounced), and the held messages go out once it opens.
func TestGateHoldsDeliveries(t *testing.T) {
	var calls atomic.Int32
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		calls.Add(1)
		return relay.Result{Reply: "250 ok", Errs: make([]error, len(m.Recipients))}
	})}
	g := &gate{}
	g.closed.Store(true)
	h := open(t, t.TempDir(), tr, func(o *Options) { o.Gate = g })
	h.run(t)
	ids := []string{enqueue(t, h.q, "one\r\n", "a@example.net"), enqueue(t, h.q, "two\r\n", "b@example.net")}
	// The workers have asked the closed gate several times: nothing may have reached the transport.
	waitFor(t, "workers held at the gate", 5*time.Second, func() bool { return g.asked.Load() >= 6 })
	if n := calls.Load(); n != 0 {
		t.Fatalf("%d attempts while the store was unavailable", n)
	}
	for _, id := range ids {
		e, ok := h.q.Get(id)
		if !ok || e.Attempts != 0 {
			t.Fatalf("held entry %s: %+v %v", id, e, ok)
		}
	}
	g.closed.Store(false)
	waitFor(t, "held deliveries", 5*time.Second, func() bool {
		_, a := h.q.Get(ids[0])
		_, b := h.q.Get(ids[1])
		return !a && !b
	})
	if n := calls.Load(); n != 2 || len(h.rec.Bounces()) != 0 {
		t.Errorf("%d attempts, %d bounces after the store came back; want 2 and 0", n, len(h.rec.Bounces()))
	}
}
