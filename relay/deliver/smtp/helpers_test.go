package smtp_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/smtp"
	"github.com/mailgate/mailgate/relay/metrics"
	"github.com/mailgate/mailgate/relay/peertest"
)

// logBuffer collects the transport's log lines so tests can assert on remedies and on the absence of
// secrets.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type harness struct {
	tr   *smtp.Transport
	logs *logBuffer
	met  *metrics.Metrics
}

// newTransport builds a Transport with a debug JSON logger into a buffer and a fresh registry.
func newTransport(t testing.TB, o smtp.Options) *harness {
	t.Helper()
	h := &harness{logs: &logBuffer{}, met: metrics.New(prometheus.NewRegistry())}
	o.Logger = slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o.Metrics = h.met
	if o.Name == "" {
		o.Name = "upstream-test"
	}
	if o.HeloName == "" {
		o.HeloName = "mailgate.test"
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.CommandTimeout == 0 {
		o.CommandTimeout = 10 * time.Second
	}
	tr, err := smtp.New(o)
	if err != nil {
		t.Fatal(err)
	}
	h.tr = tr
	t.Cleanup(func() { tr.Close() })
	return h
}

func hostPort(t testing.TB, addr string) (string, int) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return h, n
}

var msgSeq atomic.Int64

// message returns a small composed message to rcpts.
func message(rcpts ...string) *relay.Message {
	n := msgSeq.Add(1)
	body := fmt.Sprintf("From: Example Support <support@example.com>\r\nTo: %s\r\nSubject: test %d\r\n"+
		"Message-ID: <t%d@example.com>\r\n\r\nHello from the upstream test.\r\n.leading dot line\r\n", strings.Join(rcpts, ", "), n, n)
	return bodyMessage(body, rcpts...)
}

func bodyMessage(body string, rcpts ...string) *relay.Message {
	return &relay.Message{
		QueueID: fmt.Sprintf("q%d", msgSeq.Add(1)), Channel: "Support", MailFrom: "support@example.com",
		Recipients: rcpts, Size: int64(len(body)),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(body)), nil },
	}
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// mustDeliver fails the test unless every recipient was delivered.
func mustDeliver(t testing.TB, tr *smtp.Transport, m *relay.Message) relay.Result {
	t.Helper()
	res := tr.Deliver(ctxTimeout(t, 30*time.Second), m)
	for i, err := range res.Errs {
		if err != nil {
			t.Fatalf("recipient %s: %v", m.Recipients[i], err)
		}
	}
	if !strings.HasPrefix(res.Reply, "250 ") {
		t.Fatalf("reply %q, want 250 ...", res.Reply)
	}
	return res
}

// relayErr asserts err is a *relay.Error with the given code and reason.
func relayErr(t testing.TB, err error, code int, reason string) *relay.Error {
	t.Helper()
	re, ok := relay.AsError(err)
	if !ok {
		t.Fatalf("error %v (%T) is not a *relay.Error", err, err)
	}
	if re.Code != code || (reason != "" && re.Reason != reason) {
		t.Fatalf("error = %v (reason %q), want code %d reason %q", re, re.Reason, code, reason)
	}
	return re
}

// setupErr asserts that err is a failure of the relay's own account or configuration: reason
// upstream_auth, and relay.Classify makes it a setup fault (deferred and alerted, never a bounce).
func setupErr(t testing.TB, err error) *relay.Error {
	t.Helper()
	re, ok := relay.AsError(err)
	if !ok {
		t.Fatalf("error %v (%T) is not a *relay.Error", err, err)
	}
	if re.Reason != smtp.ReasonUpstreamAuth || relay.Classify(re) != relay.FaultSetup {
		t.Fatalf("error = %v (reason %q, fault %s), want a setup fault with reason upstream_auth", re, re.Reason, relay.Classify(re))
	}
	return re
}

var sessRE = regexp.MustCompile(`sess=(\d+) quit=\d+ mesg=(\d+)`)

// sinkSessions reads smtp-sink's -c counters: ended sessions and messages.
func sinkSessions(t testing.TB, s *peertest.Sink) (sess, mesg int) {
	t.Helper()
	b, err := os.ReadFile(s.Log)
	if err != nil {
		t.Fatal(err)
	}
	all := sessRE.FindAllSubmatch(b, -1)
	if len(all) == 0 {
		return 0, 0
	}
	last := all[len(all)-1]
	sess, _ = strconv.Atoi(string(last[1]))
	mesg, _ = strconv.Atoi(string(last[2]))
	return sess, mesg
}

// staticTokens is a TokenSource handing out tokens in order (the last one repeats) and recording
// invalidations, standing in for auth/oauth.
type staticTokens struct {
	mu          sync.Mutex
	tokens      []string
	err         error
	fetched     int
	invalidated []string
}

func (s *staticTokens) Token(context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return "", s.err
	}
	tok := s.tokens[min(s.fetched, len(s.tokens)-1)]
	s.fetched++
	return tok, nil
}

func (s *staticTokens) Invalidate(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.invalidated = append(s.invalidated, tok)
}

// fakeUpstream is a scripted SMTP server for reply shapes no real peer produces (Exchange Online's
// 5.7.139, 554 5.2.0 quota, 432 4.3.2, a server that stalls in DATA). It offers STARTTLS with a
// self-signed certificate and AUTH LOGIN PLAIN XOAUTH2.
type fakeUpstream struct {
	ln   net.Listener
	cert peertest.Cert
	tls  *tls.Config
	// replies overrides the reply to a command verb ("AUTH", "MAIL", "RCPT", "DATA", "." for the final
	// reply); a value may hold several replies separated by "|", used in turn (the last repeats).
	replies      map[string]string
	stallData    bool // after 354, stop reading
	stallFinal   bool // after the dot, never reply
	closeAfterTx bool // drop the connection after each final reply
	finalDelay   time.Duration
	authMechs    string // AUTH line; default "LOGIN PLAIN XOAUTH2"

	mu       sync.Mutex
	counts   map[string]int
	conns    int
	open     int
	maxOpen  int
	messages int
}

func startFake(t testing.TB, f *fakeUpstream) *fakeUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.ln, f.counts = ln, map[string]int{}
	f.cert = peertest.SelfSignedCert(t)
	kp, err := tls.LoadX509KeyPair(f.cert.CertFile, f.cert.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	f.tls = &tls.Config{Certificates: []tls.Certificate{kp}}
	var wg sync.WaitGroup
	done := make(chan struct{})
	var conns sync.Map
	t.Cleanup(func() {
		close(done)
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conns.Delete(c)
				f.serve(c, done)
			}()
		}
	}()
	return f
}

func (f *fakeUpstream) addr() string { return f.ln.Addr().String() }

func (f *fakeUpstream) stat(verb string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[verb]
}

func (f *fakeUpstream) connections() (total, maxOpen int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.conns, f.maxOpen
}

func (f *fakeUpstream) reply(verb, def string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.counts[verb]
	f.counts[verb]++
	r, ok := f.replies[verb]
	if !ok {
		return def
	}
	parts := strings.Split(r, "|")
	return parts[min(n, len(parts)-1)]
}

func (f *fakeUpstream) serve(c net.Conn, done chan struct{}) {
	f.mu.Lock()
	f.conns++
	f.open++
	f.maxOpen = max(f.maxOpen, f.open)
	f.mu.Unlock()
	counted := true
	uncount := func() {
		f.mu.Lock()
		if counted {
			f.open--
			counted = false
		}
		f.mu.Unlock()
	}
	defer func() {
		uncount()
		c.Close()
	}()
	r := bufio.NewReader(c)
	w := func(s string) { io.WriteString(c, s+"\r\n") }
	secure := false
	w("220 fake.example ESMTP")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb := strings.ToUpper(strings.SplitN(line, " ", 2)[0])
		switch verb {
		case "EHLO":
			f.reply("EHLO", "")
			ext := []string{"250-fake.example", "250-PIPELINING", "250-8BITMIME"}
			if !secure {
				ext = append(ext, "250-STARTTLS")
			}
			mechs := f.authMechs
			if mechs == "" {
				mechs = "LOGIN PLAIN XOAUTH2"
			}
			ext = append(ext, "250 AUTH "+mechs)
			w(strings.Join(ext, "\r\n"))
		case "STARTTLS":
			w("220 2.0.0 go ahead")
			tc := tls.Server(c, f.tls)
			if tc.Handshake() != nil {
				return
			}
			c, r, secure = tc, bufio.NewReader(tc), true
		case "AUTH":
			f.mu.Lock()
			f.counts["AUTH "+strings.ToUpper(strings.Fields(line + " x")[1])]++
			f.mu.Unlock()
			if strings.HasPrefix(strings.ToUpper(line), "AUTH LOGIN") {
				w("334 UGFzc3dvcmQ6")
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
			}
			rep := f.reply("AUTH", "235 2.7.0 Authentication successful")
			if strings.HasPrefix(rep, "334 ") { // XOAUTH2 error challenge, then the final reply
				w(rep)
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				rep = "535 5.7.3 Authentication unsuccessful"
			}
			w(rep)
		case "MAIL":
			w(f.reply("MAIL", "250 2.1.0 Sender OK"))
		case "RCPT":
			w(f.reply("RCPT", "250 2.1.5 Recipient OK"))
		case "DATA":
			rep := f.reply("DATA", "354 Start mail input")
			w(rep)
			if !strings.HasPrefix(rep, "354") {
				continue
			}
			if f.stallData {
				<-done
				return
			}
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			if f.stallFinal {
				<-done
				return
			}
			time.Sleep(f.finalDelay)
			rep = f.reply(".", "250 2.6.0 <id@fake.example> Queued mail for delivery")
			if strings.HasPrefix(rep, "250") {
				f.mu.Lock()
				f.messages++
				f.mu.Unlock()
			}
			w(rep)
			if f.closeAfterTx {
				return
			}
		case "RSET", "NOOP":
			f.reply(verb, "")
			w("250 2.0.0 OK")
		case "QUIT":
			uncount() // before the 221: the client may open its next connection as soon as it reads it
			w("221 2.0.0 Bye")
			return
		default:
			w("500 5.5.1 unrecognized command")
		}
	}
}
