package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/relay/peertest"
	"github.com/mailgate/mailgate/relay/queue"
)

type fakeQueue struct {
	mu      sync.Mutex
	dropped []string
}

func (f *fakeQueue) List() []queue.Entry      { return []queue.Entry{{ID: "q1"}} }
func (f *fakeQueue) RetryNow(id string) error { return queue.ErrNoEntry }
func (f *fakeQueue) Drop(id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropped = append(f.dropped, id)
	return nil
}

func (f *fakeQueue) Get(id string) (queue.Entry, bool) { return queue.Entry{ID: id}, id == "q1" }
func (f *fakeQueue) Header(string, int64) (textproto.MIMEHeader, error) {
	return textproto.MIMEHeader{"Subject": {"hi"}}, nil
}
func (f *fakeQueue) Hold(string) error    { return nil }
func (f *fakeQueue) Release(string) error { return nil }

func (f *fakeQueue) droppedIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.dropped...)
}

const token = "0123456789abcdef0123456789abcdef"

// serve starts l on a loopback port until the test ends and returns its address.
func serve(t *testing.T, l *listener) string {
	t.Helper()
	if err := l.Listen("127.0.0.1:0", nil); err != nil {
		t.Fatal(err)
	}
	return serveListening(t, l)
}

// serveListening serves l, already listening, until the test ends and returns its address.
func serveListening(t *testing.T, l *listener) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = l.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return l.Addr()
}

// TestOperatorAPINeedsToken: /metrics, /healthz and /readyz are open; the queue API and pprof answer
// 401 without the token or with a wrong one (even one that shares a prefix), 200 with it.
func TestOperatorAPINeedsToken(t *testing.T) {
	q := &fakeQueue{}
	s := New(Options{Gatherer: prometheus.NewRegistry(), Token: []byte(token), Queue: q})
	base := "http://" + serve(t, &s.listener)
	for _, p := range []string{"/metrics", "/healthz", "/readyz"} {
		if code, _ := peertest.HTTP(t, "GET", base+p, "", ""); code != 200 {
			t.Errorf("GET %s without a token: %d, want 200", p, code)
		}
	}
	for _, r := range []struct{ method, path string }{{"GET", "/queue"}, {"POST", "/queue/q1/drop"}, {"POST", "/queue/q1/retry"}, {"GET", "/debug/pprof/"}} {
		for _, bad := range []string{"", "wrong", token[:31], token + "x"} {
			if code, _ := peertest.HTTP(t, r.method, base+r.path, "", bad); code != http.StatusUnauthorized {
				t.Errorf("%s %s with token %q: %d, want 401", r.method, r.path, bad, code)
			}
		}
	}
	if len(q.droppedIDs()) != 0 {
		t.Fatalf("dropped without a token: %v", q.droppedIDs())
	}
	if code, body := peertest.HTTP(t, "GET", base+"/queue", "", token); code != 200 || !strings.Contains(body, `"q1"`) {
		t.Errorf("GET /queue with the token: %d %s", code, body)
	}
	if code, _ := peertest.HTTP(t, "POST", base+"/queue/q1/drop", "", token); code != 200 || len(q.droppedIDs()) != 1 {
		t.Errorf("drop with the token: %d %v", code, q.droppedIDs())
	}
	if code, _ := peertest.HTTP(t, "POST", base+"/queue/q9/retry", "", token); code != 404 {
		t.Errorf("retry of an unknown id: %d, want 404", code)
	}
	if code, _ := peertest.HTTP(t, "GET", base+"/debug/pprof/", "", token); code != 200 {
		t.Errorf("pprof with the token: %d", code)
	}

	// Without a configured token the operator API is off, never open.
	off := New(Options{Gatherer: prometheus.NewRegistry(), Queue: q})
	offBase := "http://" + serve(t, &off.listener)
	if code, _ := peertest.HTTP(t, "GET", offBase+"/queue", "", ""); code != http.StatusForbidden {
		t.Errorf("no token configured: GET /queue = %d, want 403", code)
	}
	if code, _ := peertest.HTTP(t, "GET", offBase+"/queue", "", "anything"); code != http.StatusForbidden {
		t.Errorf("no token configured, some bearer: GET /queue = %d, want 403", code)
	}
}

// TestHostChecked: a Host that is not localhost, an IP literal or an allowed name is refused with 421,
// on every path and even with the token (DNS rebinding carries the attacker's name).
func TestHostChecked(t *testing.T) {
	s := New(Options{Gatherer: prometheus.NewRegistry(), Token: []byte(token), Queue: &fakeQueue{}, AllowedHosts: []string{"Mailgate-1.Internal"}})
	addr := serve(t, &s.listener)
	_, port, _ := net.SplitHostPort(addr)
	base := "http://" + addr
	for _, h := range []string{"localhost:" + port, "localhost", "127.0.0.1:" + port, "[::1]:" + port, "mailgate-1.internal:" + port, "MAILGATE-1.internal."} {
		if code, _ := peertest.HTTP(t, "GET", base+"/queue", h, token); code != 200 {
			t.Errorf("Host %q: %d, want 200", h, code)
		}
	}
	for _, h := range []string{"evil.example:" + port, "evil.example", "localhost.evil.example", "mailgate-1.internal.evil.example"} {
		for _, p := range []string{"/queue", "/metrics"} {
			if code, _ := peertest.HTTP(t, "GET", base+p, h, token); code != http.StatusMisdirectedRequest {
				t.Errorf("Host %q %s: %d, want 421", h, p, code)
			}
		}
	}
}

// TestEventsServesOnlyItsPath: the events listener answers its one path and 404 elsewhere.
func TestEventsServesOnlyItsPath(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "events") })
	e := NewEvents("/ses/events", h, Limits{})
	base := "http://" + serve(t, &e.listener)
	if code, body := peertest.HTTP(t, "POST", base+"/ses/events", "", ""); code != 200 || body != "events" {
		t.Errorf("POST /ses/events: %d %q", code, body)
	}
	for _, p := range []string{"/metrics", "/healthz", "/readyz", "/queue", "/debug/pprof/"} {
		if code, _ := peertest.HTTP(t, "GET", base+p, "", ""); code != 404 {
			t.Errorf("GET %s on the events listener: %d, want 404", p, code)
		}
	}
}

// TestLimits: with two connections open, a third client is not served until one closes; a request
// body over the limit is cut; a client that never finishes its headers is disconnected.
func TestLimits(t *testing.T) {
	var got atomic.Int64
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		got.Store(n)
		if err != nil {
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
		}
	})
	e := NewEvents("/ses/events", h, Limits{MaxConnections: 2, MaxBodyBytes: 1000, ReadHeaderTimeout: 300 * time.Millisecond})
	addr := serve(t, &e.listener)

	resp, err := http.Post("http://"+addr+"/ses/events", "text/plain", strings.NewReader(strings.Repeat("x", 5000)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || got.Load() > 1000 {
		t.Errorf("5000-byte body: %d after reading %d bytes, want 413 within 1000", resp.StatusCode, got.Load())
	}

	// A slow client that sends half a request line is cut after ReadHeaderTimeout.
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "POST /ses/ev")
	slow.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := io.ReadAll(slow); err != nil || time.Since(start) > 4*time.Second {
		t.Errorf("slow client not disconnected: %v after %v", err, time.Since(start))
	}

	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "POST /ses/events HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
		buf := make([]byte, 12)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatalf("connection %d not served: %v", i, err)
		}
		held = append(held, c) // kept alive: each holds a slot
	}
	third := &http.Client{Timeout: 700 * time.Millisecond}
	if resp, err := third.Post("http://"+addr+"/ses/events", "text/plain", nil); err == nil {
		resp.Body.Close()
		t.Fatal("a third connection was served while two held every slot")
	}
	held[0].Close()
	third.Timeout = 5 * time.Second
	resp, err = third.Post("http://"+addr+"/ses/events", "text/plain", nil)
	if err != nil {
		t.Fatalf("after a slot was freed: %v", err)
	}
	resp.Body.Close()
	held[1].Close()
}

// TestReadyzWarnings: a check returning a *Warning shows as WARN and keeps /readyz at 200; a failure
// beside it makes 503.
func TestReadyzWarnings(t *testing.T) {
	s := New(Options{Gatherer: prometheus.NewRegistry()})
	base := "http://" + serve(t, &s.listener)
	s.SetChecks(map[string]Check{
		"oauth m365": func(context.Context) error {
			return fmt.Errorf("soon: %w", &Warning{Msg: "the client certificate expires in 20 days"})
		},
		"spool": func(context.Context) error { return nil },
	})
	code, body := peertest.HTTP(t, "GET", base+"/readyz", "", "")
	if code != 200 || !strings.Contains(body, "WARN oauth m365: soon: the client certificate expires in 20 days") || !strings.Contains(body, "ok   spool") {
		t.Fatalf("%d\n%s", code, body)
	}
	s.SetChecks(map[string]Check{
		"oauth m365": func(context.Context) error { return &Warning{Msg: "expires in 20 days"} },
		"store":      func(context.Context) error { return errors.New("down") },
	})
	if code, body := peertest.HTTP(t, "GET", base+"/readyz", "", ""); code != 503 || !strings.Contains(body, "FAIL store: down") {
		t.Fatalf("%d\n%s", code, body)
	}
}
