package queue

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/metrics"
)

// transportFunc adapts a function to relay.Transport.
type transportFunc func(ctx context.Context, m *relay.Message) relay.Result

func (f transportFunc) Deliver(ctx context.Context, m *relay.Message) relay.Result { return f(ctx, m) }

// recorder collects what the queue reports to its consumers.
type recorder struct {
	mu         sync.Mutex
	bounces    []relay.Bounce
	deliveries []relay.DeliveryRecord
}

func (r *recorder) RecordBounce(_ context.Context, b relay.Bounce) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bounces = append(r.bounces, b)
	return nil
}

func (r *recorder) LogDelivery(_ context.Context, d relay.DeliveryRecord) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deliveries = append(r.deliveries, d)
	return nil
}

func (r *recorder) Bounces() []relay.Bounce {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.bounces)
}

func (r *recorder) statuses(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, d := range r.deliveries {
		if d.QueueID == id {
			out = append(out, d.Status)
		}
	}
	return out
}

type harness struct {
	q   *Queue
	m   *metrics.Metrics
	rec *recorder
	dir string
}

func quietLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// open builds a Queue on dir with the given transports; tweak adjusts the options.
func open(t testing.TB, dir string, tr Transports, tweak func(*Options)) *harness {
	t.Helper()
	h := &harness{m: metrics.New(prometheus.NewRegistry()), rec: &recorder{}, dir: dir}
	o := Options{
		Dir: dir, Transports: tr, Bounces: h.rec, DeliveryLog: h.rec, Metrics: h.m,
		Logger: quietLogger(t), Workers: 4,
		Retry: Backoff{Schedule: []time.Duration{20 * time.Millisecond}, Jitter: -1},
		// Small segments: tests move from one to the next, and each open zero-fills less.
		SegmentBytes: 1 << 20,
	}
	if tweak != nil {
		tweak(&o)
	}
	q, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.q = q
	return h
}

// run starts Run and stops it (and closes the queue) when the test ends.
func (h *harness) run(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.q.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Run did not return after cancel")
		}
		h.q.Close()
	})
}

// stop ends Run (if started by runUntil) and releases the spool.
func (h *harness) closeNow(t testing.TB) {
	if err := h.q.Close(); err != nil {
		t.Fatal(err)
	}
}

func enqueue(t testing.TB, q *Queue, body string, rcpts ...string) string {
	t.Helper()
	d, err := q.Create()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(d, body); err != nil {
		t.Fatal(err)
	}
	id, err := d.Commit(context.Background(), relay.Envelope{
		Channel: "Support", Transport: "upstream", MailFrom: "bounce@example.com",
		Recipients: rcpts, MessageID: "m1@example.com", Ticket: "123456", Principal: "demo",
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func files(t testing.TB, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// spoolBody reads a queued message's body back from the spool.
func spoolBody(q *Queue, id string) (string, error) {
	rc, err := q.spool.open(id)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	return string(b), err
}

// spoolLive returns the ids the spool holds a body for.
func spoolLive(q *Queue) []string {
	q.spool.mu.Lock()
	defer q.spool.mu.Unlock()
	var ids []string
	for id := range q.spool.locs {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func readBody(t testing.TB, m *relay.Message) string {
	t.Helper()
	rc, err := m.Open()
	if err != nil {
		t.Error(err)
		return ""
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Error(err)
	}
	return string(b)
}

func TestCommitLayoutAndIDs(t *testing.T) {
	dir := t.TempDir()
	h := open(t, dir, TransportMap{}, nil)
	defer h.closeNow(t)
	var ids []string
	for range 5 {
		ids = append(ids, enqueue(t, h.q, "Subject: x\r\n\r\nhello\r\n", "a@example.net"))
	}
	if !slices.IsSorted(ids) {
		t.Errorf("ids not sortable by creation: %v", ids)
	}
	for _, id := range ids {
		if !validID(id) {
			t.Errorf("invalid id %q", id)
		}
		body, err := spoolBody(h.q, id)
		if err != nil || body != "Subject: x\r\n\r\nhello\r\n" {
			t.Errorf("body of %s: %q %v", id, body, err)
		}
		e, ok := h.q.Get(id)
		if !ok {
			t.Fatalf("no entry %s", id)
		}
		if e.Size != int64(len(body)) || e.Envelope.Ticket != "123456" || e.Recipients[0].Status != Pending {
			t.Errorf("metadata %+v", e)
		}
	}
	// Small bodies live in the segment: no file per message.
	if big := files(t, filepath.Join(dir, "big")); len(big) != 0 {
		t.Errorf("big/ not empty after small commits: %v", big)
	}
	if seg := files(t, filepath.Join(dir, "seg")); len(seg) < 1 || len(seg) > 2 {
		t.Errorf("segments: %v", seg)
	}
	if got := testutil.ToFloat64(h.m.QueueDepth); got != 5 {
		t.Errorf("QueueDepth = %v, want 5", got)
	}
	if l := h.q.List(); len(l) != 5 || l[0].ID != ids[0] {
		t.Errorf("List = %d entries", len(l))
	}
	// The delivery log knows the message as soon as it is queued.
	if s := h.rec.statuses(ids[0]); !slices.Equal(s, []string{"queued"}) {
		t.Errorf("delivery log %v", s)
	}
}

func TestAbortAndInvalidCommit(t *testing.T) {
	dir := t.TempDir()
	h := open(t, dir, TransportMap{}, nil)
	defer h.closeNow(t)
	d, _ := h.q.Create()
	io.WriteString(d, "x")
	if err := d.Abort(); err != nil {
		t.Fatal(err)
	}
	d2, _ := h.q.Create()
	_, err := d2.Commit(context.Background(), relay.Envelope{Transport: "upstream"})
	if re, ok := relay.AsError(err); !ok || re.Code != 554 {
		t.Errorf("commit without recipients: %v", err)
	}
	if _, err := d2.Commit(context.Background(), relay.Envelope{Transport: "upstream", Recipients: []string{"a@x"}}); err == nil {
		t.Error("second commit of a finished draft succeeded")
	}
	// A body that went to big/ is removed by Abort.
	d3, _ := h.q.Create()
	io.WriteString(d3, strings.Repeat("x", 2<<20))
	if f := files(t, filepath.Join(dir, "big")); len(f) != 1 {
		t.Errorf("big/ while a large draft is written: %v", f)
	}
	must(t, d3.Abort())
	if f := files(t, filepath.Join(dir, "big")); len(f) != 0 {
		t.Errorf("big/ after abort: %v", f)
	}
	if l := spoolLive(h.q); len(l) != 0 {
		t.Errorf("spool holds %v after aborts", l)
	}
}

func TestDeliverRemovesEntry(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var got []*relay.Message
	var bodies []string
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("attempt without a deadline")
		}
		b := readBody(t, m)
		mu.Lock()
		got, bodies = append(got, m), append(bodies, b)
		mu.Unlock()
		return relay.Result{Reply: "250 2.0.0 Ok: queued", Errs: make([]error, len(m.Recipients))}
	})}
	h := open(t, dir, tr, nil)
	h.run(t)
	id := enqueue(t, h.q, "hello\r\n", "a@example.net", "b@example.net")
	waitFor(t, "delivery", 5*time.Second, func() bool { _, ok := h.q.Get(id); return !ok })
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || !slices.Equal(got[0].Recipients, []string{"a@example.net", "b@example.net"}) ||
		got[0].MailFrom != "bounce@example.com" || got[0].QueueID != id || got[0].Size != 7 || bodies[0] != "hello\r\n" {
		t.Fatalf("transport saw %+v body %q", got, bodies)
	}
	if l := spoolLive(h.q); len(l) != 0 {
		t.Errorf("spool not empty after delivery: %v", l)
	}
	if s := h.rec.statuses(id); !slices.Equal(s, []string{"queued", "delivered"}) {
		t.Errorf("delivery log %v", s)
	}
	if v := testutil.ToFloat64(h.m.DeliveryAttempts.WithLabelValues("upstream", "delivered")); v != 2 {
		t.Errorf("delivered attempts metric = %v, want 2 (per recipient)", v)
	}
	if v := testutil.ToFloat64(h.m.QueueDepth); v != 0 {
		t.Errorf("QueueDepth = %v", v)
	}
}

func TestResumeAfterRestart(t *testing.T) {
	dir := t.TempDir()
	// The first instance accepts three messages but never delivers (its upstream is unknown).
	old := open(t, dir, TransportMap{}, nil)
	var ids []string
	for i := range 3 {
		ids = append(ids, enqueue(t, old.q, "msg "+string(rune('a'+i)), "r@example.net"))
	}
	if _, err := New(Options{Dir: dir, Transports: TransportMap{}}); err == nil {
		t.Fatal("a second Queue opened a spool in use")
	}
	old.closeNow(t)

	var mu sync.Mutex
	seen := map[string]string{}
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		b := readBody(t, m)
		mu.Lock()
		seen[m.QueueID] = b
		mu.Unlock()
		return relay.Result{Reply: "250 ok", Errs: make([]error, len(m.Recipients))}
	})}
	h := open(t, dir, tr, nil)
	if n := len(h.q.List()); n != 3 {
		t.Fatalf("resumed %d entries, want 3", n)
	}
	h.run(t)
	waitFor(t, "resumed deliveries", 5*time.Second, func() bool { return len(h.q.List()) == 0 })
	mu.Lock()
	defer mu.Unlock()
	for i, id := range ids {
		if seen[id] != "msg "+string(rune('a'+i)) {
			t.Errorf("%s delivered body %q", id, seen[id])
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestBackoffBounds(t *testing.T) {
	b := Backoff{Initial: time.Second, Max: 10 * time.Second, Factor: 3, Jitter: 0.25}
	want := []time.Duration{time.Second, 3 * time.Second, 9 * time.Second, 10 * time.Second, 10 * time.Second}
	for n, base := range want {
		lo, hi := time.Duration(float64(base)*0.75), time.Duration(float64(base)*1.25)
		minSeen, maxSeen := hi, lo
		for range 2000 {
			d := b.Delay(n + 1)
			if d < lo || d > hi {
				t.Fatalf("Delay(%d) = %v outside [%v, %v]", n+1, d, lo, hi)
			}
			minSeen, maxSeen = min(minSeen, d), max(maxSeen, d)
		}
		// Jitter really spreads: 2000 uniform samples cover most of the ±25 % band.
		if spread := maxSeen - minSeen; spread < time.Duration(float64(base)*0.4) {
			t.Errorf("Delay(%d) spread %v too small for ±25%% jitter of %v", n+1, spread, base)
		}
	}
	s := Backoff{Schedule: []time.Duration{time.Minute, 10 * time.Minute}, Jitter: -1}
	for n, w := range []time.Duration{time.Minute, time.Minute, 10 * time.Minute, 10 * time.Minute} {
		if d := s.Delay(max(n, 1)); n > 0 && d != w {
			t.Errorf("schedule Delay(%d) = %v, want %v", n, d, w)
		}
	}
	if d := (Backoff{}).Delay(1); d < 4*time.Minute || d > 6*time.Minute {
		t.Errorf("default first delay %v, want 5m ± 20%%", d)
	}
	if d := (Backoff{Jitter: -1}).Delay(1000); d != time.Hour {
		t.Errorf("default cap %v, want 1h", d)
	}
}

func tempFail(msg string) *relay.Error {
	return relay.Errorf(451, relay.CodeTempLocal, "upstream", "%s", msg)
}

func TestLifetimeExpiryBounces(t *testing.T) {
	dir := t.TempDir()
	var attempts sync.Map
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		n, _ := attempts.LoadOrStore(m.QueueID, new(int))
		*(n.(*int))++
		return relay.Failed(len(m.Recipients), tempFail("try again later"))
	})}
	h := open(t, dir, tr, func(o *Options) { o.MaxLifetime = 300 * time.Millisecond })
	h.run(t)
	id := enqueue(t, h.q, "x", "a@example.net", "b@example.net")
	waitFor(t, "expiry bounce", 5*time.Second, func() bool { return len(h.rec.Bounces()) == 2 })
	waitFor(t, "removal", 5*time.Second, func() bool { _, ok := h.q.Get(id); return !ok })
	for _, b := range h.rec.Bounces() {
		if b.Enhanced != relay.CodeExpired || b.Code != 554 || b.Reason != "expired" || b.QueueID != id ||
			b.Ticket != "123456" || b.Channel != "Support" || !strings.Contains(b.Diagnostic, "451 4.3.0 try again later") {
			t.Errorf("bounce %+v", b)
		}
	}
	n, _ := attempts.Load(id)
	if c := *(n.(*int)); c < 3 {
		t.Errorf("only %d attempts in a 300 ms lifetime with 20 ms retries", c)
	}
	if v := testutil.ToFloat64(h.m.Bounces.WithLabelValues("expired")); v != 2 {
		t.Errorf("Bounces{expired} = %v", v)
	}
	if s := h.rec.statuses(id); s[len(s)-1] != "bounced" {
		t.Errorf("delivery log %v", s)
	}
	if l := spoolLive(h.q); len(l) != 0 {
		t.Errorf("spool not empty: %v", l)
	}
}

func TestPartialResults(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var calls [][]string
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		mu.Lock()
		calls = append(calls, slices.Clone(m.Recipients))
		n := len(calls)
		mu.Unlock()
		if n == 1 {
			return relay.Result{Reply: "250 first", Errs: []error{
				nil,
				&relay.Error{Code: 550, Enhanced: relay.CodeBadMailbox, Msg: "user unknown"},
				tempFail("mailbox busy"),
			}}
		}
		return relay.Result{Reply: "250 second", Errs: make([]error, len(m.Recipients))}
	})}
	h := open(t, dir, tr, nil)
	h.run(t)
	id := enqueue(t, h.q, "x", "ok@example.net", "gone@example.net", "busy@example.net")
	waitFor(t, "completion", 5*time.Second, func() bool { _, ok := h.q.Get(id); return !ok })
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 || !slices.Equal(calls[1], []string{"busy@example.net"}) {
		t.Fatalf("attempts %v: the retry must carry only the pending recipient", calls)
	}
	b := h.rec.Bounces()
	if len(b) != 1 || b[0].Address != "gone@example.net" || b[0].Code != 550 || b[0].Enhanced != "5.1.1" ||
		b[0].Diagnostic != "user unknown" || b[0].Reason != "upstream" {
		t.Errorf("bounces %+v", b)
	}
	if s := h.rec.statuses(id); !slices.Equal(s, []string{"queued", "deferred", "partial"}) {
		t.Errorf("delivery log %v", s)
	}
	if v := testutil.ToFloat64(h.m.DeliveryAttempts.WithLabelValues("upstream", "deferred")); v != 1 {
		t.Errorf("deferred metric %v", v)
	}
}

func TestPartialStateIsDurable(t *testing.T) {
	dir := t.TempDir()
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		return relay.Result{Errs: []error{nil, tempFail("later")}}
	})}
	h := open(t, dir, tr, func(o *Options) { o.Retry = Backoff{Schedule: []time.Duration{time.Hour}, Jitter: -1} })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- h.q.Run(ctx) }()
	id := enqueue(t, h.q, "x", "a@example.net", "b@example.net")
	waitFor(t, "first attempt", 5*time.Second, func() bool { e, _ := h.q.Get(id); return e.Attempts == 1 })
	cancel()
	<-done
	h.closeNow(t)
	// What a restart reads back is what the attempt wrote.
	var seen []string
	h2 := open(t, dir, TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		seen = m.Recipients
		return relay.Result{Errs: make([]error, len(m.Recipients))}
	})}, nil)
	defer h2.closeNow(t)
	e, ok := h2.q.Get(id)
	if !ok || e.Attempts != 1 || e.Recipients[0].Status != Delivered || e.Recipients[1].Status != Pending ||
		e.LastError == "" || e.FirstError != e.LastError || time.Until(e.NextAttempt) < 50*time.Minute {
		t.Fatalf("resumed entry %+v", e)
	}
	must(t, h2.q.RetryNow(id))
	ctx2, cancel2 := context.WithCancel(context.Background())
	go func() { done <- h2.q.Run(ctx2) }()
	waitFor(t, "retry", 5*time.Second, func() bool { _, ok := h2.q.Get(id); return !ok })
	cancel2()
	<-done
	if !slices.Equal(seen, []string{"b@example.net"}) {
		t.Errorf("retry delivered to %v", seen)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var times []time.Time
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		mu.Lock()
		defer mu.Unlock()
		times = append(times, time.Now())
		if len(times) == 1 {
			e := tempFail("throttled")
			e.RetryAfter = 400 * time.Millisecond
			return relay.Failed(1, e)
		}
		return relay.Result{Errs: []error{nil}}
	})}
	h := open(t, dir, tr, nil) // backoff schedule is 20 ms
	h.run(t)
	id := enqueue(t, h.q, "x", "a@example.net")
	waitFor(t, "delivery", 5*time.Second, func() bool { _, ok := h.q.Get(id); return !ok })
	mu.Lock()
	defer mu.Unlock()
	if gap := times[1].Sub(times[0]); gap < 400*time.Millisecond {
		t.Errorf("retried after %v, RetryAfter asked for 400ms", gap)
	}
}

func TestUnknownTransportAndMisalignedResultDefer(t *testing.T) {
	dir := t.TempDir()
	var calls int
	var mu sync.Mutex
	tr := TransportMap{"broken": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		mu.Lock()
		calls++
		mu.Unlock()
		return relay.Result{Reply: "250 ok"} // Errs not aligned with the recipients
	})}
	h := open(t, dir, tr, func(o *Options) { o.Retry = Backoff{Schedule: []time.Duration{time.Hour}, Jitter: -1} })
	h.run(t)
	a := enqueue(t, h.q, "x", "a@example.net") // transport "upstream" is not configured
	d, _ := h.q.Create()
	io.WriteString(d, "y")
	b, err := d.Commit(context.Background(), relay.Envelope{Channel: "Support", Transport: "broken", Recipients: []string{"b@example.net"}})
	must(t, err)
	waitFor(t, "attempts", 5*time.Second, func() bool {
		ea, _ := h.q.Get(a)
		eb, _ := h.q.Get(b)
		return ea.Attempts == 1 && eb.Attempts == 1
	})
	for _, id := range []string{a, b} {
		e, ok := h.q.Get(id)
		if !ok || e.Recipients[0].Status != Pending || !strings.Contains(e.LastError, "451 4.3.0") {
			t.Errorf("%s: %+v", id, e)
		}
	}
	if len(h.rec.Bounces()) != 0 {
		t.Error("a configuration problem bounced a recipient")
	}
}

func TestDropDoesNotBounce(t *testing.T) {
	dir := t.TempDir()
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		return relay.Failed(len(m.Recipients), tempFail("later"))
	})}
	h := open(t, dir, tr, func(o *Options) { o.Retry = Backoff{Schedule: []time.Duration{time.Hour}, Jitter: -1} })
	h.run(t)
	id := enqueue(t, h.q, "x", "a@example.net")
	waitFor(t, "first attempt", 5*time.Second, func() bool { e, _ := h.q.Get(id); return e.Attempts == 1 })
	must(t, h.q.RetryNow(id))
	waitFor(t, "retry", 5*time.Second, func() bool { e, _ := h.q.Get(id); return e.Attempts == 2 })
	must(t, h.q.Drop(id))
	if _, ok := h.q.Get(id); ok {
		t.Error("dropped entry still listed")
	}
	if l := spoolLive(h.q); len(l) != 0 {
		t.Errorf("spool after drop: %v", l)
	}
	if len(h.rec.Bounces()) != 0 {
		t.Error("drop recorded a bounce")
	}
	if s := h.rec.statuses(id); s[len(s)-1] != "dropped" {
		t.Errorf("delivery log %v", s)
	}
	if err := h.q.Drop(id); !errors.Is(err, ErrNoEntry) {
		t.Errorf("second drop: %v", err)
	}
	if err := h.q.RetryNow("nonexistent"); !errors.Is(err, ErrNoEntry) {
		t.Errorf("retry unknown: %v", err)
	}
}

func TestShutdownWaitsForAttemptInFlight(t *testing.T) {
	dir := t.TempDir()
	started := make(chan struct{})
	release := make(chan struct{})
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		close(started)
		<-release
		return relay.Result{Errs: make([]error, len(m.Recipients))}
	})}
	h := open(t, dir, tr, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.q.Run(ctx) }()
	id := enqueue(t, h.q, "x", "a@example.net")
	<-started
	cancel()
	select {
	case <-done:
		t.Fatal("Run returned with an attempt in flight")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-done
	h.closeNow(t)
	h2 := open(t, dir, TransportMap{}, nil)
	defer h2.closeNow(t)
	if _, ok := h2.q.Get(id); ok {
		t.Error("finished attempt not recorded")
	}
}

// TestSetPolicyApplies: a policy set while the queue runs governs the next scheduling decision: with a
// lifetime of a week nothing expires, then a lifetime shortened by SetPolicy bounces the message.
func TestSetPolicyApplies(t *testing.T) {
	dir := t.TempDir()
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		return relay.Failed(len(m.Recipients), tempFail("try again later"))
	})}
	h := open(t, dir, tr, func(o *Options) { o.MaxLifetime = 7 * 24 * time.Hour })
	h.run(t)
	id := enqueue(t, h.q, "x", "a@example.net")
	waitFor(t, "a few attempts", 5*time.Second, func() bool { e, ok := h.q.Get(id); return ok && e.Attempts >= 3 })
	if n := len(h.rec.Bounces()); n != 0 {
		t.Fatalf("%d bounces within a week's lifetime", n)
	}
	h.q.SetPolicy(Policy{Retry: Backoff{Schedule: []time.Duration{20 * time.Millisecond}, Jitter: -1}, MaxLifetime: time.Millisecond})
	waitFor(t, "expiry bounce under the new policy", 5*time.Second, func() bool { return len(h.rec.Bounces()) == 1 })
	if b := h.rec.Bounces()[0]; b.Enhanced != relay.CodeExpired {
		t.Errorf("bounce %+v", b)
	}
}
