package smtp_test

import (
	"bytes"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/smtp"
	"github.com/mailgate/mailgate/relay/peertest"
)

// spoolBody reads like the queue's segment reader: seekable, with a Size. Only such a body may go by
// BDAT, whose size is announced before the first byte.
type spoolBody struct{ *io.SectionReader }

func (spoolBody) Close() error { return nil }

// chunkable makes m's body read like the spool's.
func chunkable(m *relay.Message) *relay.Message {
	open := m.Open
	m.Open = func() (io.ReadCloser, error) {
		rc, err := open()
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(rc)
		if err != nil {
			return nil, err
		}
		return spoolBody{io.NewSectionReader(strings.NewReader(string(b)), 0, int64(len(b)))}, nil
	}
	return m
}

// TestChunkingPostfix: against Postfix's smtpd (CHUNKING and PIPELINING), every message goes as MAIL,
// RCPT and BDAT LAST in one group — no DATA — and every refusal leaves the one pooled connection fit
// for the next, innocent message: Postfix keeps MAIL open after every RCPT is refused, so a missing
// RSET would get that message "503 nested MAIL". Outcomes follow DESIGN §4's table.
func TestChunkingPostfix(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{
		SenderAccess:    []string{"refused-sender@example.com 553 5.7.1 Sender address rejected: not owned by you"},
		RecipientAccess: []string{"unknown@example.net 550 5.1.1 User unknown", "later@example.net 451 4.2.0 Try again later"},
		HeaderChecks:    []string{"/^Subject: .*SPAM/ REJECT 5.7.1 Message content rejected"},
	})
	host, port := hostPort(t, pf.Addr)
	h := newTransport(t, smtp.Options{Host: host, Port: port, MaxConnections: 1})
	innocent := func() {
		t.Helper()
		mustDeliver(t, h.tr, chunkable(message("innocent@example.org")))
	}
	fault := func(err error) relay.Fault { return relay.Classify(err) }

	innocent()

	m := chunkable(message("a@example.net"))
	m.MailFrom = "refused-sender@example.com"
	res := h.tr.Deliver(ctxTimeout(t, 20*time.Second), m)
	if f := fault(res.Errs[0]); f != relay.FaultSetup {
		t.Errorf("sender refused at MAIL: fault %v (%v), want setup", f, res.Errs[0])
	}
	innocent()

	res = h.tr.Deliver(ctxTimeout(t, 20*time.Second), chunkable(message("unknown@example.net", "good@example.net")))
	if f := fault(res.Errs[0]); f != relay.FaultAddress {
		t.Errorf("unknown recipient: fault %v (%v), want address", f, res.Errs[0])
	}
	if res.Errs[1] != nil {
		t.Errorf("the good recipient beside it: %v", res.Errs[1])
	}
	innocent()

	res = h.tr.Deliver(ctxTimeout(t, 20*time.Second), chunkable(message("unknown@example.net")))
	if f := fault(res.Errs[0]); f != relay.FaultAddress {
		t.Errorf("every recipient refused: fault %v (%v), want address", f, res.Errs[0])
	}
	innocent()

	res = h.tr.Deliver(ctxTimeout(t, 20*time.Second), chunkable(message("later@example.net")))
	if f := fault(res.Errs[0]); f != relay.FaultTemporary {
		t.Errorf("451 at RCPT: fault %v (%v), want temporary", f, res.Errs[0])
	}
	innocent()

	spam := chunkable(bodyMessage("From: support@example.com\r\nTo: c@example.net\r\nSubject: cheap SPAM\r\n\r\nbuy\r\n", "c@example.net"))
	res = h.tr.Deliver(ctxTimeout(t, 20*time.Second), spam)
	if f := fault(res.Errs[0]); f != relay.FaultMessage {
		t.Errorf("content refused after the last byte: fault %v (%v), want message", f, res.Errs[0])
	}
	innocent()

	h.tr.Close() // QUIT: Postfix logs the session's command counts
	delivered := pf.Delivered(t, 7, 20*time.Second)
	for _, d := range delivered {
		if !strings.Contains(d, "\n.leading dot line\n") {
			t.Fatalf("a line starting with a dot arrived changed (BDAT is not dot-stuffed):\n%s", d)
		}
	}
	sessions := pf.Sessions(t, 1, 10*time.Second)
	if len(sessions) != 1 {
		t.Fatalf("%d sessions sent mail, want the one pooled connection; log:\n%s", len(sessions), pf.MailLog())
	}
	c := sessions[0]
	// 11 transactions: MAIL refused once; BDAT accepted for the 6 innocent ones and the partly refused
	// one; RSET after each of the other 4, whose transaction did not end with a BDAT answered 250.
	want := map[string]string{"mail": "10/11", "rcpt": "8/12", "bdat": "7/11", "rset": "4"}
	for k, v := range want {
		if c[k] != v {
			t.Errorf("Postfix counted %s=%s, want %s (all: %v)", k, c[k], v, c)
		}
	}
	if c["data"] != "" {
		t.Errorf("DATA was sent (data=%s) to a server offering CHUNKING", c["data"])
	}
}

// TestChunkingDisabled: chunking: false in the configuration sends DATA to the same server.
func TestChunkingDisabled(t *testing.T) {
	pf := peertest.StartPostfix(t, peertest.PostfixOptions{})
	host, port := hostPort(t, pf.Addr)
	h := newTransport(t, smtp.Options{Host: host, Port: port, DisableChunking: true})
	for range 2 {
		mustDeliver(t, h.tr, chunkable(message("a@example.net")))
	}
	h.tr.Close()
	pf.Delivered(t, 2, 20*time.Second)
	c := pf.Sessions(t, 1, 10*time.Second)[0]
	if c["data"] != "2" || c["bdat"] != "" {
		t.Fatalf("want data=2 and no bdat, got %v", c)
	}
}

// goSMTPPeer is go-smtp's server (mailgate's own submission library, which offers CHUNKING and
// PIPELINING) with per-address refusals; it records every byte clients send and can drop their
// connections. It takes a new MAIL inside an open transaction, so RSET is checked against Postfix
// (TestChunkingPostfix), not here.
type goSMTPPeer struct {
	addr string
	mu   sync.Mutex
	got  []peerMessage
	raw  bytes.Buffer // everything clients sent
	conn []net.Conn
}

type peerMessage struct {
	rcpts []string
	body  []byte
}

func startGoSMTPPeer(t testing.TB) *goSMTPPeer {
	t.Helper()
	p := &goSMTPPeer{}
	srv := gosmtp.NewServer(p)
	srv.Domain = "peer.test"
	srv.AllowInsecureAuth = true
	srv.ErrorLog = log.New(io.Discard, "", 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	go func() { _ = srv.Serve(&recordingListener{Listener: ln, p: p}) }()
	t.Cleanup(func() { srv.Close() })
	return p
}

// dropConnections closes every connection from the server's side, as an upstream's idle timeout does.
func (p *goSMTPPeer) dropConnections() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conn {
		c.Close()
	}
	p.conn = nil
}

func (p *goSMTPPeer) messages() []peerMessage {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]peerMessage(nil), p.got...)
}

func (p *goSMTPPeer) sent() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.raw.String()
}

type recordingListener struct {
	net.Listener
	p *goSMTPPeer
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.p.mu.Lock()
	l.p.conn = append(l.p.conn, c)
	l.p.mu.Unlock()
	return &recordingConn{Conn: c, p: l.p}, nil
}

type recordingConn struct {
	net.Conn
	p *goSMTPPeer
}

func (c *recordingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.p.mu.Lock()
	c.p.raw.Write(b[:n])
	c.p.mu.Unlock()
	return n, err
}

func (p *goSMTPPeer) NewSession(*gosmtp.Conn) (gosmtp.Session, error) { return &peerSession{p: p}, nil }

type peerSession struct {
	p     *goSMTPPeer
	rcpts []string
}

func (s *peerSession) Mail(from string, _ *gosmtp.MailOptions) error {
	if strings.HasPrefix(from, "refused-sender@") {
		return &gosmtp.SMTPError{Code: 553, EnhancedCode: gosmtp.EnhancedCode{5, 7, 1}, Message: "Sender not allowed"}
	}
	return nil
}

func (s *peerSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	if strings.HasPrefix(to, "unknown@") {
		return &gosmtp.SMTPError{Code: 550, EnhancedCode: gosmtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
	}
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *peerSession) Data(r io.Reader) error {
	body, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if bytes.Contains(body, []byte("SPAM")) {
		return &gosmtp.SMTPError{Code: 554, EnhancedCode: gosmtp.EnhancedCode{5, 7, 1}, Message: "Message content rejected"}
	}
	s.p.mu.Lock()
	s.p.got = append(s.p.got, peerMessage{rcpts: s.rcpts, body: body})
	s.p.mu.Unlock()
	return nil
}

func (s *peerSession) Reset()        { s.rcpts = nil }
func (s *peerSession) Logout() error { return nil }

// TestChunkingGoSMTP: refusals are classified as against Postfix, bodies arrive byte for byte (BDAT is
// not dot-stuffed), and a pooled connection the server dropped is replaced with the body sent again
// from its first byte (the first attempt had already read it for the dead connection).
func TestChunkingGoSMTP(t *testing.T) {
	p := startGoSMTPPeer(t)
	host, port := hostPort(t, p.addr)
	h := newTransport(t, smtp.Options{Host: host, Port: port, MaxConnections: 1})
	var want [][]byte
	innocent := func() {
		t.Helper()
		m := chunkable(message("innocent@example.org"))
		rc, _ := m.Open()
		b, _ := io.ReadAll(rc)
		want = append(want, b)
		mustDeliver(t, h.tr, m)
	}
	innocent()

	m := chunkable(message("a@example.net"))
	m.MailFrom = "refused-sender@example.com"
	if f := relay.Classify(h.tr.Deliver(ctxTimeout(t, 10*time.Second), m).Errs[0]); f != relay.FaultSetup {
		t.Errorf("sender refused at MAIL: fault %v, want setup", f)
	}
	innocent()
	if f := relay.Classify(h.tr.Deliver(ctxTimeout(t, 10*time.Second), chunkable(message("unknown@example.net"))).Errs[0]); f != relay.FaultAddress {
		t.Errorf("every recipient refused: fault %v, want address", f)
	}
	innocent()
	spam := chunkable(bodyMessage("Subject: SPAM\r\n\r\nx\r\n", "c@example.net"))
	if f := relay.Classify(h.tr.Deliver(ctxTimeout(t, 10*time.Second), spam).Errs[0]); f != relay.FaultMessage {
		t.Errorf("content refused: fault %v, want message", f)
	}
	innocent()

	p.dropConnections()
	time.Sleep(100 * time.Millisecond)
	innocent() // on the dead pooled session first, then on a new one

	got := p.messages()
	if len(got) != len(want) {
		t.Fatalf("peer accepted %d messages, want %d", len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i].body, want[i]) {
			t.Errorf("message %d arrived as %q, sent %q", i, got[i].body, want[i])
		}
	}
	sent := p.sent()
	if !strings.Contains(sent, " LAST\r\n") || strings.Contains(sent, "\r\nDATA\r\n") {
		t.Errorf("want BDAT … LAST and no DATA; the client sent:\n%s", sent)
	}
}
