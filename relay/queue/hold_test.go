package queue_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/metrics"
	"github.com/mailgate/mailgate/relay/queue"
)

// countingTransport defers every attempt while failing is set, else delivers; it counts attempts.
type countingTransport struct {
	failing  atomic.Bool
	attempts atomic.Int32
}

func (c *countingTransport) Deliver(_ context.Context, m *relay.Message) relay.Result {
	c.attempts.Add(1)
	if c.failing.Load() {
		return relay.Failed(len(m.Recipients), relay.Errorf(451, "4.4.1", "network", "upstream down"))
	}
	return relay.Result{Reply: "250 ok", Errs: make([]error, len(m.Recipients))}
}

// runQueue opens a queue on dir and runs it until the returned stop is called.
func runQueue(t *testing.T, dir string, tr relay.Transport, m *metrics.Metrics) (*queue.Queue, func()) {
	t.Helper()
	q, err := queue.New(queue.Options{Dir: dir, Transports: queue.TransportMap{"upstream": tr}, Workers: 2, Metrics: m,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Retry: queue.Backoff{Schedule: []time.Duration{30 * time.Millisecond}, Jitter: -1}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); q.Run(ctx) }()
	var once sync.Once
	return q, func() { once.Do(func() { cancel(); wg.Wait(); q.Close() }) }
}

// TestHoldAndRelease: a held message is not attempted — across a restart too — and a release sends it
// at once; retry of a held message is refused with ErrHeld; show's header is the composed message's.
func TestHoldAndRelease(t *testing.T) {
	dir := t.TempDir()
	tr := &countingTransport{}
	tr.failing.Store(true)
	m := metrics.New(prometheus.NewRegistry())
	q, stop := runQueue(t, dir, tr, m)
	r := &rig{q: q}
	id := r.enqueue(t, "", "held@example.net", "X-Case: 77\r\n")
	r.waitAttempted(t, id)
	if err := q.Hold(id); err != nil {
		t.Fatal(err)
	}
	before := tr.attempts.Load()
	time.Sleep(200 * time.Millisecond) // several retry intervals: a held message must sit still
	if n := tr.attempts.Load(); n != before {
		t.Fatalf("%d attempts while held", n-before)
	}
	if err := q.RetryNow(id); !errors.Is(err, queue.ErrHeld) {
		t.Fatalf("retry of a held message: %v", err)
	}
	waitUntil(t, "the held and per-transport gauges", func() bool {
		return testutil.ToFloat64(m.QueueHeld) == 1 && testutil.ToFloat64(m.QueueByTransport.WithLabelValues("upstream")) == 1
	})
	h, err := q.Header(id, 64<<10)
	if err != nil || h.Get("X-Case") != "77" || h.Get("Subject") == "" {
		t.Fatalf("header %v %v", h, err)
	}
	stop()

	tr.failing.Store(false)
	q, stop = runQueue(t, dir, tr, metrics.New(prometheus.NewRegistry()))
	defer stop()
	r = &rig{q: q}
	before = tr.attempts.Load()
	time.Sleep(200 * time.Millisecond)
	if e, ok := q.Get(id); !ok || !e.Held || tr.attempts.Load() != before {
		t.Fatalf("after a restart: queued=%v held=%v, %d attempts", ok, e.Held, tr.attempts.Load()-before)
	}
	if err := q.Release(id); err != nil {
		t.Fatal(err)
	}
	r.waitGone(t, id)
}
