package submit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message/textproto"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailgate/mailgate/auth"
	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/metrics"
	"github.com/mailgate/mailgate/relay/peertest"
)

// fakeSpool writes drafts into a test directory; Commit records the envelope.
type fakeSpool struct {
	dir       string
	mu        sync.Mutex
	seq       int
	committed []committedMessage
	aborted   int
	createErr error
	commitErr error
	noBodies  bool // benchmarks: do not keep bodies in memory
}

type committedMessage struct {
	ID   string
	Env  relay.Envelope
	Body string
}

func (s *fakeSpool) Create() (relay.Draft, error) {
	if s.createErr != nil {
		return nil, s.createErr
	}
	f, err := os.CreateTemp(s.dir, "draft-*")
	if err != nil {
		return nil, err
	}
	return &fakeDraft{f: f, spool: s}, nil
}

func (s *fakeSpool) Messages() []committedMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]committedMessage(nil), s.committed...)
}

func (s *fakeSpool) Aborted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.aborted
}

type fakeDraft struct {
	f     *os.File
	spool *fakeSpool
}

func (d *fakeDraft) Write(p []byte) (int, error) { return d.f.Write(p) }

func (d *fakeDraft) Commit(ctx context.Context, env relay.Envelope) (string, error) {
	if d.spool.commitErr != nil {
		return "", d.spool.commitErr
	}
	if err := d.f.Close(); err != nil {
		return "", err
	}
	var body []byte
	if !d.spool.noBodies {
		var err error
		if body, err = os.ReadFile(d.f.Name()); err != nil {
			return "", err
		}
	}
	_ = os.Remove(d.f.Name())
	d.spool.mu.Lock()
	defer d.spool.mu.Unlock()
	d.spool.seq++
	id := fmt.Sprintf("Q%06d", d.spool.seq)
	d.spool.committed = append(d.spool.committed, committedMessage{ID: id, Env: env, Body: string(body)})
	return id, nil
}

func (d *fakeDraft) Abort() error {
	d.spool.mu.Lock()
	d.spool.aborted++
	d.spool.mu.Unlock()
	d.f.Close()
	return os.Remove(d.f.Name())
}

// passThrough is a stand-in for relay/compose: it copies the message unchanged and judges reply vs new
// outbound the way DESIGN §2 says (In-Reply-To, References or a ticket header).
type passThrough struct{}

func (passThrough) Compose(ctx context.Context, src io.Reader, dst io.Writer, sub *Submission) (*Composed, error) {
	br := bufio.NewReader(src)
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return nil, relay.Wrap(err, 554, relay.CodeMalformed, "malformed", "Message header is malformed")
	}
	c := &Composed{
		MessageID: strings.Trim(h.Get("Message-Id"), "<> "),
		Ticket:    h.Get("X-Mailgate-Ticket"),
	}
	c.Reply = h.Has("In-Reply-To") || h.Has("References") || c.Ticket != ""
	if c.MessageID == "" {
		c.MessageID = sub.SessionID + "@mailgate.test"
	}
	cw := &countingWriter{w: dst}
	if err := textproto.WriteHeader(cw, h); err != nil {
		return nil, err
	}
	if _, err := io.Copy(cw, br); err != nil {
		return nil, err
	}
	c.Size = cw.n
	return c, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// composerFunc lets a test make the composer fail in ways a real one might.
type composerFunc func(ctx context.Context, src io.Reader, dst io.Writer, sub *Submission) (*Composed, error)

func (f composerFunc) Compose(ctx context.Context, src io.Reader, dst io.Writer, sub *Submission) (*Composed, error) {
	return f(ctx, src, dst, sub)
}

type fakeSuppressions map[string]string

func (f fakeSuppressions) Suppressed(_ context.Context, addr string) (string, bool, error) {
	if addr == "broken@example.net" {
		return "", false, errors.New("store: database is locked at /var/lib/mailgate/store.db")
	}
	r, ok := f[strings.ToLower(addr)]
	return r, ok, nil
}

// syncBuffer collects log output from concurrent sessions.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func hashPW(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

var testChannels = []Channel{
	{Name: "Support", FromAddress: "support@example.com", OutboundActive: true, Transport: "outbox", MailFrom: "bounces@example.com"},
	{Name: "Sales", FromAddress: "Sales@Example.com", OutboundActive: false, Transport: "m365", ForceTLS: true},
	{Name: "Billing", FromAddress: "billing@example.com", OutboundActive: true, Transport: "outbox"},
	{Name: "Small", FromAddress: "small@example.com", OutboundActive: true, Transport: "ses", MaxMessageBytes: 4096},
}

func testDirectory(t testing.TB, trusted ...auth.TrustedNetwork) *auth.Directory {
	t.Helper()
	d, err := auth.NewDirectory(
		[]auth.User{
			{Login: "demo", Name: "Demo Agent", PasswordHash: hashPW(t, "demo"), Role: "agent"},
			{Login: "replier", Name: "Reply Only", PasswordHash: hashPW(t, "replier"), Role: "replier"},
		},
		[]auth.Role{
			{Name: "agent", Channels: map[string]auth.Permission{
				"Support": {Reply: true, Outbound: true}, "Sales": {Reply: true, Outbound: true}, "Small": {Reply: true, Outbound: true}}},
			{Name: "replier", Channels: map[string]auth.Permission{"Support": {Reply: true}}},
			{Name: "app", Channels: map[string]auth.Permission{"Support": {Reply: true, Outbound: true}}},
		},
		trusted,
	)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

type harness struct {
	srv     *Server
	spool   *fakeSpool
	reg     *prometheus.Registry
	metrics *metrics.Metrics
	logs    *syncBuffer
	cert    peertest.Cert
	tmp     string
}

// startServer runs a Server with three listeners on 127.0.0.1:0 — "submission" (STARTTLS),
// "submissions" (implicit TLS) and "dev" (STARTTLS offered, AUTH allowed without TLS) — and stops it
// when the test ends.
func startServer(t testing.TB, configure func(*Options), composer Composer, trusted ...auth.TrustedNetwork) *harness {
	t.Helper()
	h := &harness{
		spool: &fakeSpool{dir: t.TempDir()},
		logs:  &syncBuffer{},
		cert:  peertest.SelfSignedCert(t),
		tmp:   t.TempDir(),
	}
	h.reg = prometheus.NewRegistry()
	h.metrics = metrics.New(h.reg)
	kp, err := tls.LoadX509KeyPair(h.cert.CertFile, h.cert.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{
		Hostname: "mailgate.test",
		Listeners: []Listener{
			{Name: "submission", Address: "127.0.0.1:0", Mode: ModeStartTLS},
			{Name: "submissions", Address: "127.0.0.1:0", Mode: ModeImplicit},
			{Name: "dev", Address: "127.0.0.1:0", Mode: ModeStartTLS, AllowInsecureAuth: true},
		},
		TLSConfig:       &tls.Config{Certificates: []tls.Certificate{kp}},
		MaxMessageBytes: 64 << 10,
		MaxRecipients:   5,
		IdleTimeout:     10 * time.Second,
		TempDir:         h.tmp,
		Spool:           h.spool,
		Suppressions:    fakeSuppressions{"bounced@example.net": "550 5.1.1 mailbox unavailable (bounced 2026-11-01)"},
		Logger:          slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics:         h.metrics,
	}
	if configure != nil {
		configure(&o)
	}
	if composer == nil {
		composer = passThrough{}
	}
	rules, err := NewRules(testDirectory(t, trusted...), testChannels, composer)
	if err != nil {
		t.Fatal(err)
	}
	h.srv, err = New(o, rules)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Serve did not return")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", h.logs.String())
		}
	})
	return h
}

func (h *harness) port(t testing.TB, listener string) string {
	t.Helper()
	a, ok := h.srv.Addr(listener).(*net.TCPAddr)
	if !ok {
		t.Fatalf("no listener %s", listener)
	}
	return strconv.Itoa(a.Port)
}

// swaks runs the real swaks against a listener.
func (h *harness) swaks(t *testing.T, listener string, args ...string) (string, int) {
	t.Helper()
	base := []string{"--server", "127.0.0.1", "--port", h.port(t, listener), "--helo", "agent-app.test",
		"--to", "customer@example.net"}
	return peertest.Swaks(t, append(base, args...)...)
}

// rawClient speaks SMTP byte for byte, for what swaks cannot send (bare CR/LF, BDAT).
type rawClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	return greeted(t, c, err)
}

// greeted takes a freshly dialled connection (or the dial's error) and reads the greeting.
func greeted(t *testing.T, c net.Conn, err error) *rawClient {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, c: c, r: bufio.NewReader(c)}
	if got := rc.reply(); !strings.HasPrefix(got, "220 ") {
		t.Fatalf("banner %q", got)
	}
	return rc
}

// reply reads one (possibly multi-line) reply and returns all of it.
func (rc *rawClient) reply() string {
	rc.t.Helper()
	var all []string
	for {
		line, err := rc.r.ReadString('\n')
		if err != nil {
			rc.t.Fatalf("reading reply: %v (so far %q)", err, all)
		}
		line = strings.TrimRight(line, "\r\n")
		all = append(all, line)
		if len(line) < 4 || line[3] != '-' {
			return strings.Join(all, "\n")
		}
	}
}

func (rc *rawClient) send(raw string) {
	rc.t.Helper()
	if _, err := io.WriteString(rc.c, raw); err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *rawClient) cmd(line string) string {
	rc.t.Helper()
	rc.send(line + "\r\n")
	return rc.reply()
}

func (rc *rawClient) expect(line, prefix string) string {
	rc.t.Helper()
	got := rc.cmd(line)
	if !strings.HasPrefix(lastLine(got), prefix) {
		rc.t.Fatalf("%q: got %q, want %s...", line, got, prefix)
	}
	return got
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// authPlain logs in on a listener that allows AUTH without TLS.
func (rc *rawClient) authPlain(user, pass string) {
	rc.t.Helper()
	rc.expect("EHLO raw.test", "250 ")
	ir := base64Std("\x00" + user + "\x00" + pass)
	rc.expect("AUTH PLAIN "+ir, "235 ")
}

func addrOf(t testing.TB, h *harness, listener string) string {
	return net.JoinHostPort("127.0.0.1", h.port(t, listener))
}

var loopback = netip.MustParsePrefix("127.0.0.0/8")

// hasFile reports whether any file is left in dir (raw DATA files must be removed).
func filesIn(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}
