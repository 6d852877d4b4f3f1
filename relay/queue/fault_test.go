package queue_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/smtp"
	"github.com/mailgate/mailgate/relay/metrics"
	"github.com/mailgate/mailgate/relay/peertest"
	"github.com/mailgate/mailgate/relay/queue"
	"github.com/mailgate/mailgate/relay/store"
)

// The failure-semantics scenarios of DESIGN §4 ("Whose fault, and what follows") against a peer that
// keeps SMTP transaction state: the real queue, the real SMTP transport (one pooled connection, so the
// next message rides the session the failure left behind), the real SQLite store, and Node's
// smtp-server with per-address rules. After each scenario an innocent customer, sent next on the same
// connection, must be delivered and never suppressed; only an address fault suppresses.

const ticket = "123456"

var nodeRules = []peertest.NodeRule{
	{At: "mail", Match: "^blocked-sender@", Reply: "553 5.7.1 Sender address rejected: not owned by user"},
	{At: "rcpt", Match: "^nosuchuser@", Reply: "550 5.1.1 Recipient address rejected: User unknown"},
	{At: "rcpt", Match: "^disabled@", Reply: "550 5.2.1 Mailbox disabled"},
	{At: "rcpt", Match: "^busy@", Reply: "451 4.3.0 Try again later"},
	{At: "rcpt", Match: "^elsewhere@", Reply: "554 5.7.1 Relay access denied"},
	{At: "data", Match: "X-Test-Spam: yes", Reply: "554 5.7.1 Message rejected as spam"},
	{At: "data", Match: "X-Test-Size: big", Reply: "552 5.3.4 Message size exceeds fixed limit"},
}

// outcome is what a scenario's first message must come to.
type outcome int

const (
	bounced         outcome = iota // bounced, not suppressed
	bouncedSuppress                // bounced and suppressed
	deferred                       // still queued, not bounced
)

type scenario struct {
	name    string
	from    string
	rcpt    string
	headers string
	want    outcome
}

var scenarios = []scenario{
	{name: "rcpt 550 5.1.1", rcpt: "nosuchuser@example.net", want: bouncedSuppress},
	{name: "rcpt 550 5.2.1 disabled", rcpt: "disabled@example.net", want: bouncedSuppress},
	{name: "rcpt 451", rcpt: "busy@example.net", want: deferred},
	{name: "rcpt 554 5.7.1 relay denied", rcpt: "elsewhere@example.net", want: deferred},
	{name: "mail 553 5.7.1 sender refused", from: "blocked-sender@example.com", rcpt: "customer@example.net", want: deferred},
	{name: "data 554 5.7.1 spam", rcpt: "customer@example.net", headers: "X-Test-Spam: yes\r\n", want: bounced},
	{name: "data 552 5.3.4 size", rcpt: "customer@example.net", headers: "X-Test-Size: big\r\n", want: bounced},
}

func TestFailureSemanticsNodePipelining(t *testing.T)  { runScenarios(t, false) }
func TestFailureSemanticsNodeUnpipelined(t *testing.T) { runScenarios(t, true) }

func runScenarios(t *testing.T, hidePipelining bool) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{Rules: nodeRules, HidePipelining: hidePipelining})
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			r := newRig(t, peer)
			first := r.enqueue(t, sc.from, sc.rcpt, sc.headers)
			r.waitAttempted(t, first)
			innocent := r.innocent()
			second := r.enqueue(t, "", innocent, "")
			r.waitGone(t, second)
			r.assertDelivered(t, second, innocent)
			r.assertNotSuppressed(t, innocent)

			switch sc.want {
			case deferred:
				e, ok := r.q.Get(first)
				if !ok || len(e.Pending()) != 1 {
					t.Fatalf("first message: queued=%v %+v, want deferred", ok, e)
				}
				if bs := r.bounces(t, sc.rcpt); len(bs) != 0 {
					t.Fatalf("bounced for a fault that is not the address's or the message's: %+v", bs)
				}
				// "queue retry" of the deferred message rides the pooled session too: the next innocent
				// message after it must still be delivered.
				if err := r.q.RetryNow(first); err != nil {
					t.Fatal(err)
				}
				r.waitAttempts(t, first, 2)
				again := r.innocent()
				third := r.enqueue(t, "", again, "")
				r.waitGone(t, third)
				r.assertDelivered(t, third, again)
			case bounced, bouncedSuppress:
				r.waitGone(t, first)
				bs := r.bounces(t, sc.rcpt)
				if len(bs) != 1 || bs[0].Suppressed != (sc.want == bouncedSuppress) {
					t.Fatalf("bounce records %+v, want one with suppressed=%v", bs, sc.want == bouncedSuppress)
				}
			}
			_, suppressed, err := r.st.Suppressed(context.Background(), sc.rcpt)
			if err != nil || suppressed != (sc.want == bouncedSuppress) {
				t.Fatalf("%s suppressed=%v (%v), want %v", sc.rcpt, suppressed, err, sc.want == bouncedSuppress)
			}
			r.assertNotSuppressed(t, innocent)
		})
	}
}

// TestSetupFaultExpiresWithoutSuppression: mail that waits on the relay refusing mailgate's envelope
// sender bounces 5.4.7 when its lifetime ends, and the address is not suppressed: a long outage of
// mailgate's own setup must not blacklist the queued customers.
func TestSetupFaultExpiresWithoutSuppression(t *testing.T) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{Rules: nodeRules})
	m := metrics.New(prometheus.NewRegistry())
	r := newRig(t, peer, func(o *queue.Options) { o.MaxLifetime, o.Metrics = 300*time.Millisecond, m })
	id := r.enqueue(t, "blocked-sender@example.com", "customer@example.net", "")
	r.waitGone(t, id)
	bs := r.bounces(t, "customer@example.net")
	if len(bs) != 1 || bs[0].Enhanced != relay.CodeExpired || bs[0].Suppressed || bs[0].Fault != relay.FaultSetup {
		t.Fatalf("bounces %+v, want one 5.4.7 setup bounce without suppression", bs)
	}
	r.assertNotSuppressed(t, "customer@example.net")
	if a := r.q.Alerts(); len(a) != 1 || a[0].Fault != relay.FaultSetup || !strings.Contains(a[0].Msg, "553") ||
		!strings.Contains(a[0].Remedy, "mail_from") {
		t.Fatalf("alerts %+v, want the setup fault raised with its remedy", a)
	}
	if n := testutil.ToFloat64(m.DeliveryFaults.WithLabelValues("upstream", "setup")); n < 2 {
		t.Errorf("mailgate_delivery_failures_total{fault=setup} = %v, want every deferred attempt counted", n)
	}
	if g := testutil.ToFloat64(m.DeliveryAlerts.WithLabelValues("upstream", "setup")); g != 1 {
		t.Errorf("mailgate_delivery_alert{fault=setup} = %v, want 1", g)
	}
}

// rig is a queue delivering through the real SMTP transport to the Node peer, with the real store.
type rig struct {
	q         *queue.Queue
	st        *store.SQLite
	peer      *peertest.NodeSMTP
	innocents int
}

// innocent is a new customer address no other message of the test went to.
func (r *rig) innocent() string {
	r.innocents++
	return fmt.Sprintf("innocent-%d-%d@example.net", time.Now().UnixNano(), r.innocents)
}

func newRig(t *testing.T, peer *peertest.NodeSMTP, tweaks ...func(*queue.Options)) *rig {
	t.Helper()
	host, portStr, _ := net.SplitHostPort(peer.Addr)
	port, _ := strconv.Atoi(portStr)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	tr, err := smtp.New(smtp.Options{Name: "upstream", Host: host, Port: port, RootCAs: peer.Cert.Pool,
		Auth: smtp.AuthLogin, Username: "user", Password: "pass", MaxConnections: 1, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	st, err := store.Open(filepath.Join(t.TempDir(), "mailgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	o := queue.Options{
		Dir: t.TempDir(), Transports: queue.TransportMap{"upstream": tr}, Bounces: st, Logger: logger,
		Workers: 1, Retry: queue.Backoff{Schedule: []time.Duration{time.Hour}, Jitter: -1},
	}
	for _, tw := range tweaks {
		tw(&o)
	}
	if o.MaxLifetime > 0 {
		o.Retry.Schedule = []time.Duration{50 * time.Millisecond}
	}
	q, err := queue.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		q.Close()
	})
	return &rig{q: q, st: st, peer: peer}
}

func (r *rig) enqueue(t *testing.T, from, rcpt, headers string) string {
	t.Helper()
	if from == "" {
		from = "support@example.com"
	}
	d, err := r.q.Create()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(d, "From: Support <support@example.com>\r\nTo: <%s>\r\nSubject: Your order [#%s]\r\n%s\r\nHello.\r\n", rcpt, ticket, headers)
	id, err := d.Commit(context.Background(), relay.Envelope{Channel: "Support", Transport: "upstream", MailFrom: from,
		Recipients: []string{rcpt}, MessageID: "m@example.com", Ticket: ticket, Received: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func (r *rig) waitAttempted(t *testing.T, id string) { r.waitAttempts(t, id, 1) }

// waitAttempts waits until the entry has had n attempts or is gone.
func (r *rig) waitAttempts(t *testing.T, id string, n int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d attempt(s) of %s", n, id), func() bool {
		e, ok := r.q.Get(id)
		return !ok || e.Attempts >= n
	})
}

func (r *rig) waitGone(t *testing.T, id string) {
	t.Helper()
	waitUntil(t, "message "+id+" finished", func() bool {
		_, ok := r.q.Get(id)
		return !ok
	})
}

// assertDelivered checks that the upstream accepted a message for rcpt after id left the queue
// undelivered to nobody: the queue has it gone and no bounce names it.
func (r *rig) assertDelivered(t *testing.T, id, rcpt string) {
	t.Helper()
	if bs, _ := r.st.Bounces(context.Background(), store.BounceFilter{Address: rcpt}); len(bs) != 0 {
		t.Fatalf("innocent %s bounced: %+v", rcpt, bs)
	}
	for _, a := range r.peer.Accepted(t) {
		if to, _ := a["to"].([]any); len(to) == 1 && to[0] == rcpt {
			return
		}
	}
	t.Fatalf("the upstream never accepted the message %s for %s", id, rcpt)
}

func (r *rig) assertNotSuppressed(t *testing.T, addr string) {
	t.Helper()
	if reason, ok, err := r.st.Suppressed(context.Background(), addr); ok || err != nil {
		t.Fatalf("%s is suppressed (%q, %v)", addr, reason, err)
	}
}

func (r *rig) bounces(t *testing.T, addr string) []relay.Bounce {
	t.Helper()
	bs, err := r.st.Bounces(context.Background(), store.BounceFilter{Address: addr})
	if err != nil {
		t.Fatal(err)
	}
	return bs
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// concurrencyTransport delivers after a short wait and records the most Deliver calls at once.
type concurrencyTransport struct {
	mu        sync.Mutex
	now, peak int
}

func (c *concurrencyTransport) Deliver(ctx context.Context, m *relay.Message) relay.Result {
	c.mu.Lock()
	c.now++
	c.peak = max(c.peak, c.now)
	c.mu.Unlock()
	time.Sleep(20 * time.Millisecond)
	c.mu.Lock()
	c.now--
	c.mu.Unlock()
	return relay.Result{Errs: make([]error, len(m.Recipients)), Reply: "250 ok"}
}

func (c *concurrencyTransport) resetPeak() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.peak
	c.peak = 0
	return p
}

// TestSetPolicyWorkers: a reload's worker counts apply while the queue runs — surplus workers retire,
// new ones start — so a transport never has more attempts in flight than its connection slots.
func TestSetPolicyWorkers(t *testing.T) {
	tr := &concurrencyTransport{}
	q, err := queue.New(queue.Options{Dir: t.TempDir(), Transports: queue.TransportMap{"upstream": tr}, Workers: 4,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	defer func() { cancel(); <-done; q.Close() }()
	r := &rig{q: q}
	batch := func(n int) int {
		ids := make([]string, n)
		for i := range ids {
			ids[i] = r.enqueue(t, "", r.innocent(), "")
		}
		for _, id := range ids {
			r.waitGone(t, id)
		}
		return tr.resetPeak()
	}
	if p := batch(12); p != 4 {
		t.Fatalf("peak %d attempts at once with 4 workers", p)
	}
	q.SetPolicy(queue.Policy{Workers: 4, TransportWorkers: map[string]int{"upstream": 1}})
	if p := batch(6); p != 1 {
		t.Fatalf("peak %d attempts at once after the reload to 1 worker", p)
	}
	q.SetPolicy(queue.Policy{Workers: 3})
	if p := batch(12); p != 3 {
		t.Fatalf("peak %d attempts at once after the reload to 3 workers", p)
	}
}

// flakyBounces is the real store behind a bounce store that fails its first n writes (a locked or
// unreachable database).
type flakyBounces struct {
	store.Store
	mu    sync.Mutex
	fails int
}

func (f *flakyBounces) RecordBounce(ctx context.Context, b relay.Bounce) error {
	f.mu.Lock()
	fail := f.fails > 0
	f.fails--
	f.mu.Unlock()
	if fail {
		return relay.Errorf(451, relay.CodeTempLocal, "store", "local store unavailable")
	}
	return f.Store.RecordBounce(ctx, b)
}

// TestBounceRecordRetried: when the bounce store fails, the bounce is not forgotten: the message stays
// queued with its bounce unrecorded, the record is retried with the next attempt, and the address ends
// up suppressed.
func TestBounceRecordRetried(t *testing.T) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{Rules: nodeRules})
	var flaky *flakyBounces
	r := newRig(t, peer, func(o *queue.Options) {
		flaky = &flakyBounces{Store: o.Bounces.(store.Store), fails: 2}
		o.Bounces = flaky
		o.Retry = queue.Backoff{Schedule: []time.Duration{150 * time.Millisecond}, Jitter: -1}
	})
	id := r.enqueue(t, "", "nosuchuser@example.net", "")
	r.waitAttempted(t, id)
	if e, ok := r.q.Get(id); !ok || e.Recipients[0].Status != queue.Bounced || !e.Recipients[0].Unrecorded {
		t.Fatalf("after a failed bounce record: queued=%v %+v, want kept with the bounce unrecorded", ok, e)
	}
	r.waitGone(t, id)
	if _, ok, _ := r.st.Suppressed(context.Background(), "nosuchuser@example.net"); !ok {
		t.Fatal("the bounce was never recorded: the address is not suppressed")
	}
	if bs := r.bounces(t, "nosuchuser@example.net"); len(bs) != 1 {
		t.Fatalf("%d bounce records, want 1", len(bs))
	}
}

// TestDeliveryLogPerRecipient: a message to a good and a bad address ends "partial" in the delivery log
// with a row per recipient — who got it, who bounced and why — found by either address.
func TestDeliveryLogPerRecipient(t *testing.T) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{Rules: nodeRules})
	var st store.Store
	r := newRig(t, peer, func(o *queue.Options) { st = o.Bounces.(store.Store); o.DeliveryLog = st })
	good := r.innocent()
	d, err := r.q.Create()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(d, "From: <support@example.com>\r\nTo: <%s>\r\nSubject: two\r\n\r\nHello.\r\n", good)
	id, err := d.Commit(context.Background(), relay.Envelope{Channel: "Support", Transport: "upstream", MailFrom: "support@example.com",
		Recipients: []string{good, "nosuchuser@example.net"}, Ticket: "424242", Received: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	r.waitGone(t, id)
	var recs []relay.DeliveryRecord
	waitUntil(t, "the per-recipient log rows", func() bool {
		recs, _ = st.Deliveries(context.Background(), store.DeliveryFilter{Rcpt: "NoSuchUser@example.net"})
		return len(recs) == 1 && recs[0].Status == "partial"
	})
	if len(recs[0].States) != 2 {
		t.Fatalf("states %+v", recs[0].States)
	}
	for _, s := range recs[0].States {
		switch s.Address {
		case good:
			if s.Status != "delivered" || !strings.HasPrefix(s.Reply, "250") {
				t.Errorf("good recipient %+v", s)
			}
		case "nosuchuser@example.net":
			if s.Status != "bounced" || s.Code != 550 || s.Enhanced != "5.1.1" {
				t.Errorf("bad recipient %+v", s)
			}
		}
	}
	if byGood, _ := st.Deliveries(context.Background(), store.DeliveryFilter{Rcpt: good}); len(byGood) != 1 || byGood[0].QueueID != id {
		t.Errorf("search by the delivered address: %+v", byGood)
	}
}

// TestSpoolBodiesGoByBDAT: the spool's body readers — a message in a segment, and one over the
// large-body threshold in a file of its own — qualify for BDAT (known size, rewindable): against
// Postfix's smtpd, which offers CHUNKING, both go as BDAT LAST, never DATA, and arrive whole.
func TestSpoolBodiesGoByBDAT(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{})
	host, portStr, _ := net.SplitHostPort(pf.Addr)
	port, _ := strconv.Atoi(portStr)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	tr, err := smtp.New(smtp.Options{Name: "upstream", Host: host, Port: port, MaxConnections: 1, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	q, err := queue.New(queue.Options{Dir: t.TempDir(), Transports: queue.TransportMap{"upstream": tr}, Logger: logger, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		q.Close()
	}()
	big := strings.Repeat(strings.Repeat("z", 98)+"\r\n", (3<<20)/100) // 3 MiB: a file of its own
	var ids []string
	for i, body := range []string{"Hello.\r\n.a line with a leading dot\r\n", big} {
		d, err := q.Create()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(d, "From: Support <support@example.com>\r\nTo: <c%d@example.net>\r\nSubject: bdat %d\r\n\r\n%s", i, i, body)
		id, err := d.Commit(context.Background(), relay.Envelope{Channel: "Support", Transport: "upstream", MailFrom: "support@example.com",
			Recipients: []string{fmt.Sprintf("c%d@example.net", i)}, Received: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range ids {
		waitUntil(t, "message "+id+" delivered", func() bool { _, ok := q.Get(id); return !ok })
	}
	// The sink writes each message as it arrives from Postfix: wait until both are whole.
	whole := func() bool {
		joined := strings.ReplaceAll(strings.Join(pf.Delivered(t, 2, 30*time.Second), ""), "\r\n", "\n")
		return strings.Contains(joined, "\n.a line with a leading dot\n") && strings.Contains(joined, strings.ReplaceAll(big, "\r\n", "\n"))
	}
	waitUntil(t, "both bodies whole at the sink", whole)
	tr.Close() // QUIT: Postfix logs the session's command counts
	c := pf.Sessions(t, 1, 10*time.Second)[0]
	if c["bdat"] != "2" || c["data"] != "" {
		t.Fatalf("want both messages by BDAT and none by DATA; Postfix counted %v", c)
	}
}
