package submit

// The hostile group: what an attacker does before and around AUTH, over raw TCP sockets on loopback,
// every loop bounded in count and time. Run alone with go test -run TestHostile ./relay/submit.

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/mailgate/mailgate/auth"
)

// metricsSize is the size of the /metrics text exposition of the harness's registry and its number of
// lines (series, HELP and TYPE).
func (h *harness) metricsSize(t *testing.T) (size, lines int) {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.Len(), bytes.Count(b.Bytes(), []byte("\n"))
}

// countChecks makes the server count its real password checks.
func countChecks(n *atomic.Int64) func(*Options) {
	return func(o *Options) {
		o.CheckPassword = func(d *auth.Directory, login, password string) (*auth.Principal, error) {
			n.Add(1)
			return d.Authenticate(login, password)
		}
	}
}

// Made-up mechanisms, also after the failure limit, get 504 5.5.4 and add neither metric series nor
// log lines: 10,000 of them leave /metrics as it was.
func TestHostileUnknownMechanisms(t *testing.T) {
	h := startServer(t, func(o *Options) { o.AuthFailures = 2; o.AuthClientFailures = 2 }, nil)
	rc := dialRaw(t, addrOf(t, h, "dev"))
	rc.expect("EHLO raw.test", "250 ")
	for i := 0; i < 2; i++ {
		rc.expect("AUTH PLAIN "+base64Std("\x00demo\x00wrong"), "535 5.7.8")
	}
	rc.expect("AUTH PLAIN "+base64Std("\x00demo\x00demo"), "454 4.7.0")
	rc.expect("AUTH MADE-UP-0", "504 5.5.4")
	before, beforeLines := h.metricsSize(t)

	const n = 10_000
	long := strings.Repeat("M", 500)
	go func() { // pipelined: the replies are read below while the commands are still being written
		w := bufio.NewWriter(rc.c)
		for i := 1; i <= n; i++ {
			fmt.Fprintf(w, "AUTH %s-%d\r\n", long, i)
		}
		_ = w.Flush()
	}()
	_ = rc.c.SetDeadline(time.Now().Add(60 * time.Second))
	for i := 1; i <= n; i++ {
		if got := rc.reply(); !strings.HasPrefix(got, "504 5.5.4 ") {
			t.Fatalf("command %d: %q", i, got)
		}
	}
	rc.expect("NOOP", "250 ")

	// The counter's value gains digits (1 → 10001); nothing else may change.
	if after, afterLines := h.metricsSize(t); afterLines != beforeLines || after > before+8 {
		t.Fatalf("/metrics grew from %d to %d bytes, %d to %d lines, after %d made-up mechanisms",
			before, after, beforeLines, afterLines, n)
	}
	if v := testutil.ToFloat64(h.metrics.AuthAttempts.WithLabelValues(mechanismOther, "unknown_mechanism")); v != n+1 {
		t.Errorf("unknown_mechanism count %v, want %d", v, n+1)
	}
	logs := h.logs.String()
	if c := strings.Count(logs, "unknown_mechanism"); c != 1 {
		t.Errorf("%d log lines for unknown mechanisms, want 1 per session", c)
	}
	if strings.Contains(logs, long) {
		t.Error("a log line quotes more than 64 bytes of a client string")
	}
}

// stageLogin opens a connection and takes an AUTH LOGIN exchange up to the password prompt.
func stageLogin(t *testing.T, addr, user string) *rawClient {
	rc := dialRaw(t, addr)
	rc.expect("EHLO raw.test", "250 ")
	rc.expect("AUTH LOGIN", "334 ")
	rc.expect(base64Std(user), "334 ")
	return rc
}

// Staged and parallel AUTH LOGIN exchanges get no more real password checks than the limit; the
// refusal says when to retry; another agent behind the same client is not locked out.
func TestHostileStagedAuth(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sessions int
		parallel bool
	}{
		{"100 staged", 100, false},
		{"50 parallel", 50, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var checks atomic.Int64
			h := startServer(t, func(o *Options) {
				countChecks(&checks)(o)
				o.MaxConnections, o.AuthFailures, o.AuthClientFailures, o.AuthWindow = 200, 5, 20, time.Minute
			}, nil)
			addr := addrOf(t, h, "dev")
			staged := make([]*rawClient, tc.sessions)
			for i := range staged {
				staged[i] = stageLogin(t, addr, "demo")
			}
			replies := make([]string, len(staged))
			send := func(i int) { replies[i] = staged[i].cmd(base64Std("wrong")) }
			if tc.parallel {
				var wg sync.WaitGroup
				for i := range staged {
					wg.Go(func() { send(i) })
				}
				wg.Wait()
			} else {
				for i := range staged {
					staged[i].send(base64Std("wrong") + "\r\n") // every password on the wire first
				}
				for i := range staged {
					replies[i] = staged[i].reply()
				}
			}
			if n := checks.Load(); n > 5 {
				t.Fatalf("%d real password checks, limit 5", n)
			}
			refused := 0
			for _, r := range replies {
				switch {
				case strings.HasPrefix(r, "535 5.7.8 "):
				case strings.HasPrefix(r, "454 4.7.0 ") && strings.Contains(r, "retry in"):
					refused++
				default:
					t.Fatalf("reply %q", r)
				}
			}
			if refused < tc.sessions-5 {
				t.Fatalf("%d refused, want at least %d", refused, tc.sessions-5)
			}
			// One agent's wrong password does not lock out another agent of the same application
			// server (within the per-client ceiling).
			rc := dialRaw(t, addr)
			rc.authPlain("replier", "replier")
			if !strings.Contains(h.logs.String(), "login=demo") {
				t.Error("failed attempt does not name the login")
			}
			if strings.Contains(h.logs.String(), "wrong") {
				t.Error("a password reached the log")
			}
		})
	}
}

// An application server logging in with one account over many connections at once is not refused:
// checks beyond the limit wait for those in flight instead.
func TestHostileParallelGoodLogins(t *testing.T) {
	var inFlight, most atomic.Int64
	h := startServer(t, func(o *Options) {
		o.AuthFailures, o.AuthClientFailures = 5, 20
		o.CheckPassword = func(d *auth.Directory, login, password string) (*auth.Principal, error) {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
			}
			// A production bcrypt cost takes tens of milliseconds (the tests' hashes use the minimum):
			// long enough for the other logins to arrive while these are in flight.
			time.Sleep(50 * time.Millisecond)
			return d.Authenticate(login, password)
		}
	}, nil)
	addr := addrOf(t, h, "dev")
	staged := make([]*rawClient, 30)
	for i := range staged {
		staged[i] = stageLogin(t, addr, "demo")
	}
	replies := make([]string, len(staged))
	var wg sync.WaitGroup
	for i := range staged {
		wg.Go(func() { replies[i] = staged[i].cmd(base64Std("demo")) })
	}
	wg.Wait()
	for i, r := range replies {
		if !strings.HasPrefix(r, "235 ") {
			t.Errorf("login %d: %q", i, r)
		}
	}
	if most.Load() > 5 {
		t.Errorf("%d password checks in flight at once, limit 5", most.Load())
	}
}

// Sixty connections that dribble bytes must not starve a real client: the time to authenticate and
// the time per command line are bounded, whatever the rate of single bytes.
func TestHostileSlowLoris(t *testing.T) {
	h := startServer(t, func(o *Options) {
		o.MaxConnections, o.MaxConnectionsPerClient = 60, 60
		o.AuthTimeout, o.CommandTimeout, o.IdleTimeout = 1500*time.Millisecond, time.Second, 10*time.Second
	}, nil)
	addr := addrOf(t, h, "dev")
	var wg sync.WaitGroup
	var held atomic.Int64
	for i := 0; i < 60; i++ {
		// From four loopback addresses, like the reported attack.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%4))}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		held.Add(1)
		wg.Go(func() {
			defer held.Add(-1)
			line := "EHLO slow.example\r\n"
			for k := 0; k < 200; k++ { // a byte every 100 ms for up to 20 s: each read makes progress
				time.Sleep(100 * time.Millisecond)
				if _, err := c.Write([]byte{line[k%len(line)]}); err != nil {
					return // cut by the server
				}
			}
		})
	}
	// All slots are taken now: a real client is refused at first, and served within a few seconds.
	deadline := time.Now().Add(10 * time.Second)
	served := false
	for !served && time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		greeting, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if strings.HasPrefix(greeting, "220 ") {
			served = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !served {
		t.Fatalf("a real client was not served in 10s while %d slow connections were open", held.Load())
	}
	rc := dialRaw(t, addr)
	rc.authPlain("demo", "demo")
	rc.expect("MAIL FROM:<x@example.org>", "250 ")
	wg.Wait() // every slow writer stops when the server has cut its connection
	if v := testutil.ToFloat64(h.metrics.MessagesRejected.WithLabelValues(stageSession, cutAuthTimeout)) +
		testutil.ToFloat64(h.metrics.MessagesRejected.WithLabelValues(stageSession, cutCommandTimeout)); v != 60 {
		t.Errorf("%v slow connections cut, want 60", v)
	}
}

// After AUTH, a command line dribbled byte by byte is cut at the command timeout, and a DATA transfer
// under the minimum rate gets 451 4.4.2 and the connection is closed.
func TestHostileSlowAfterAuth(t *testing.T) {
	h := startServer(t, func(o *Options) {
		o.CommandTimeout, o.DataMinRate, o.DataRateWindow = time.Second, 100, time.Second
	}, nil)
	addr := addrOf(t, h, "dev")

	t.Run("command line", func(t *testing.T) {
		rc := dialRaw(t, addr)
		rc.authPlain("demo", "demo")
		start := time.Now()
		for _, b := range []byte("MAIL FROM:<x@example.org>") { // 26 bytes at 100 ms: 2.6 s
			if _, err := rc.c.Write([]byte{b}); err != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		_, _ = rc.c.Write([]byte("\r\n"))
		// go-smtp's line reader hands on the part of the line that arrived (a syntax error, as a
		// prefix of the client's own line), then meets the cut: 421 4.4.2 and close.
		got := rc.reply()
		if strings.HasPrefix(got, "501 ") {
			got = rc.reply()
		}
		if !strings.HasPrefix(got, "421 4.4.2") || time.Since(start) > 5*time.Second {
			t.Fatalf("dribbled line: %q after %v", got, time.Since(start))
		}
	})
	t.Run("DATA rate", func(t *testing.T) {
		rc := dialRaw(t, addr)
		rc.authPlain("demo", "demo")
		rc.expect("MAIL FROM:<x@example.org>", "250 ")
		rc.expect("RCPT TO:<customer@example.net>", "250 ")
		rc.expect("DATA", "354 ")
		rc.send("From: support@example.com\r\nIn-Reply-To: <t@example.net>\r\n\r\n")
		done := make(chan struct{})
		go func() {
			defer close(done)
			for k := 0; k < 100; k++ { // 10 bytes a second, a tenth of the minimum
				if _, err := rc.c.Write([]byte("x")); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		if got := rc.reply(); !strings.HasPrefix(got, "451 4.4.2 Transfer too slow") {
			t.Fatalf("slow DATA: %q", got)
		}
		if line, err := rc.r.ReadString('\n'); err == nil && !strings.HasPrefix(line, "421 ") {
			t.Fatalf("after the refusal: %q, want 421 and close", line)
		}
		rc.c.Close()
		<-done
		if n := len(h.spool.Messages()); n != 0 {
			t.Fatalf("%d messages queued", n)
		}
	})
}

// dialRawTLS is dialRaw on an implicit-TLS listener.
func dialRawTLS(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{InsecureSkipVerify: true}) // the test's self-signed certificate
	return greeted(t, c, err)
}

// A NUL byte, and a line starting ".\r" that is not the end of data (go-smtp's reader used to drop its
// CR, hiding it from the bare-CR check), are refused with 554 5.6.0, in plain text and under TLS, and
// the session stays in sync.
func TestHostileDATA(t *testing.T) {
	h := startServer(t, nil, nil)
	const head = "From: support@example.com\r\nTo: customer@example.net\r\nIn-Reply-To: <t@example.net>\r\nSubject: probe\r\n\r\n"
	const smuggled = "MAIL FROM:<support@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n" +
		"From: support@example.com\r\nIn-Reply-To: <t@example.net>\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
	for _, listener := range []string{"dev", "submissions"} {
		for _, probe := range []struct{ name, body, reason string }{
			{"NUL", "text with a \x00 NUL\r\n", "NUL byte"},
			{`\r\n.\r + command`, "first\r\n.\r" + smuggled, "bare CR"},
			{`\r\n.\r + text`, "first\r\n.\rsecond line\r\n", "bare CR"},
			{`\r\n.\r\r\n`, "first\r\n.\r\r\nsecond line\r\n", "bare CR"},
		} {
			t.Run(listener+"/"+probe.name, func(t *testing.T) {
				var rc *rawClient
				if listener == "dev" {
					rc = dialRaw(t, addrOf(t, h, listener))
				} else {
					rc = dialRawTLS(t, addrOf(t, h, listener))
				}
				rc.authPlain("demo", "demo")
				rc.expect("MAIL FROM:<x@example.org>", "250 ")
				rc.expect("RCPT TO:<customer@example.net>", "250 ")
				rc.expect("DATA", "354 ")
				rc.send(head + probe.body + ".\r\n")
				if got := rc.reply(); !strings.HasPrefix(got, "554 5.6.0 ") || !strings.Contains(got, probe.reason) {
					t.Fatalf("reply %q, want 554 5.6.0 ... %s", got, probe.reason)
				}
				rc.expect("NOOP", "250 2.0.0 I have successfully done nothing")
				rc.expect("QUIT", "221 ")
				if n := len(h.spool.Messages()); n != 0 {
					t.Fatalf("%d messages queued", n)
				}
			})
		}
	}
	// BDAT carries raw bytes: a NUL in a chunk is refused as well.
	rc := dialRaw(t, addrOf(t, h, "dev"))
	rc.authPlain("demo", "demo")
	rc.expect("MAIL FROM:<x@example.org>", "250 ")
	rc.expect("RCPT TO:<customer@example.net>", "250 ")
	chunk := head + "a \x00 in BDAT\r\n"
	rc.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(chunk), chunk))
	if got := rc.reply(); !strings.HasPrefix(got, "554 5.6.0 ") {
		t.Fatalf("BDAT with NUL: %q", got)
	}
	rc.expect("NOOP", "250 ")
}
