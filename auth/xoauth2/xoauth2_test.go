package xoauth2_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/auth/xoauth2"
	"github.com/mailgate/mailgate/relay/peertest"
)

func TestInitialResponseRoundTrip(t *testing.T) {
	ir := xoauth2.InitialResponse("sender@contoso.example", "ya29.tok-en_1")
	if want := "user=sender@contoso.example\x01auth=Bearer ya29.tok-en_1\x01\x01"; string(ir) != want {
		t.Fatalf("initial response %q, want %q", ir, want)
	}
	u, tok, err := xoauth2.ParseInitialResponse(ir)
	if err != nil || u != "sender@contoso.example" || tok != "ya29.tok-en_1" {
		t.Fatalf("parse = %q %q %v", u, tok, err)
	}
}

func TestParseInitialResponseRejects(t *testing.T) {
	for _, in := range []string{
		"", "user=a\x01auth=Bearer t\x01", "user=a\x01auth=Bearer t", "auth=Bearer t\x01user=a\x01\x01",
		"user=a\x01auth=Basic t\x01\x01", "user=a\x01auth=Bearer \x01\x01", "user=\x01auth=Bearer t\x01\x01",
		"user=a\x01auth=Bearer t\x01x=y\x01\x01", "user=a\x01auth=Bearer t u\x01\x01", "user=a\x01auth=Bearer\x01\x01",
	} {
		if _, _, err := xoauth2.ParseInitialResponse([]byte(in)); !errors.Is(err, xoauth2.ErrMalformed) {
			t.Errorf("ParseInitialResponse(%q) err = %v, want ErrMalformed", in, err)
		}
	}
	// The scheme is case-insensitive (RFC 6750 §2.1).
	if _, tok, err := xoauth2.ParseInitialResponse([]byte("user=a\x01auth=bearer t\x01\x01")); err != nil || tok != "t" {
		t.Errorf("lower-case scheme: %q %v", tok, err)
	}
}

func TestClientAnswersChallengeWithEmptyNonNilResponse(t *testing.T) {
	c := xoauth2.NewClient("a@b", "tok")
	mech, ir, err := c.Start()
	if err != nil || mech != "XOAUTH2" || !bytes.Contains(ir, []byte("auth=Bearer tok")) {
		t.Fatalf("Start = %q %q %v", mech, ir, err)
	}
	resp, err := c.Next([]byte(`{"status":"401","schemes":"bearer","scope":"https://outlook.office.com/SMTP.Send"}`))
	if err != nil || resp == nil || len(resp) != 0 {
		t.Fatalf("Next = %#v, %v; want non-nil empty response", resp, err)
	}
	f := c.Failure()
	if f == nil || f.Status != "401" || f.Schemes != "bearer" || f.Scope != "https://outlook.office.com/SMTP.Send" {
		t.Fatalf("Failure = %+v", f)
	}
	if _, err := c.Next([]byte("again")); !errors.Is(err, sasl.ErrUnexpectedServerChallenge) {
		t.Fatalf("second challenge err = %v", err)
	}
	if _, _, err := xoauth2.NewClient("a@b", "").Start(); err == nil {
		t.Fatal("empty token accepted")
	}
	if _, _, err := xoauth2.NewClient("a@b", "secret-token x").Start(); err == nil || bytes.Contains([]byte(err.Error()), []byte("secret-token")) {
		t.Fatalf("malformed token: err = %v (must fail without echoing the token)", err)
	}
}

// goBackend is a go-smtp backend whose only mechanism is the package's Server.
type goBackend struct{ good string }

func (b goBackend) NewSession(*gosmtp.Conn) (gosmtp.Session, error) {
	return &goSession{good: b.good}, nil
}

type goSession struct{ good string }

func (s *goSession) AuthMechanisms() []string { return []string{xoauth2.Mechanism} }
func (s *goSession) Auth(mech string) (sasl.Server, error) {
	return &xoauth2.Server{
		Verify: func(user, tok string) error {
			if user == "box@contoso.example" && tok == s.good {
				return nil
			}
			return errors.New("bad token")
		},
		Failure: xoauth2.Failure{Status: "401", Schemes: "bearer", Scope: "https://outlook.office.com/SMTP.Send"},
		Refused: gosmtp.ErrAuthFailed,
	}, nil
}
func (s *goSession) Mail(string, *gosmtp.MailOptions) error { return nil }
func (s *goSession) Rcpt(string, *gosmtp.RcptOptions) error { return nil }
func (s *goSession) Data(r io.Reader) error                 { _, err := io.Copy(io.Discard, r); return err }
func (s *goSession) Reset()                                 {}
func (s *goSession) Logout() error                          { return nil }

func startGoServer(t *testing.T, good string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := gosmtp.NewServer(goBackend{good: good})
	srv.AllowInsecureAuth = true // loopback only, test of the SASL exchange itself
	srv.ReadTimeout = 10 * time.Second
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

func TestClientServerOverGoSMTP(t *testing.T) {
	addr := startGoServer(t, "good-token")
	c, err := gosmtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	bad := xoauth2.NewClient("box@contoso.example", "stale-token")
	err = c.Auth(bad)
	var se *gosmtp.SMTPError
	if !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("bad token: err = %v, want 535", err)
	}
	if f := bad.Failure(); f == nil || f.Status != "401" || f.Scope != "https://outlook.office.com/SMTP.Send" {
		t.Fatalf("bad token: failure = %+v", f)
	}
	// The session is still in sync: a second AUTH on the same connection works (this is how mailgate
	// retries once with a fresh token after a 535).
	good := xoauth2.NewClient("box@contoso.example", "good-token")
	if err := c.Auth(good); err != nil {
		t.Fatalf("good token after refusal: %v", err)
	}
	if good.Failure() != nil {
		t.Fatalf("good token recorded a failure: %v", good.Failure())
	}
	if err := c.Noop(); err != nil {
		t.Fatalf("session out of sync after AUTH: %v", err)
	}
}

func TestServerWithoutInitialResponse(t *testing.T) {
	s := &xoauth2.Server{Verify: func(string, string) error { return nil }}
	ch, done, err := s.Next(nil)
	if err != nil || done || ch == nil || len(ch) != 0 {
		t.Fatalf("Next(nil) = %q %v %v", ch, done, err)
	}
	_, done, err = s.Next(xoauth2.InitialResponse("a@b", "t"))
	if err != nil || !done || s.Mailbox != "a@b" {
		t.Fatalf("Next(ir) = %v %v mailbox=%q", done, err, s.Mailbox)
	}
	r := &xoauth2.Server{Verify: func(string, string) error { return errors.New("no") }}
	if _, _, err := r.Next(xoauth2.InitialResponse("a@b", "t")); err != nil {
		t.Fatal(err)
	}
	if _, done, err := r.Next([]byte("not empty")); !done || !errors.Is(err, sasl.ErrUnexpectedClientResponse) {
		t.Fatalf("non-empty answer to the challenge: %v %v", done, err)
	}
}

// TestAgainstNodeSMTPServer runs the client against the real Node smtp-server (STARTTLS, certificate
// verified), which answers a refused token the way Microsoft 365 does.
func TestAgainstNodeSMTPServer(t *testing.T) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{StaticTokens: []string{"static-good-token"}})
	dial := func() *gosmtp.Client {
		c, err := gosmtp.DialStartTLS(peer.Addr, &tls.Config{RootCAs: peer.Cert.Pool, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if !c.SupportsAuth(xoauth2.Mechanism) {
			t.Fatal("node smtp-server does not offer XOAUTH2 after STARTTLS")
		}
		return c
	}

	c := dial()
	bad := xoauth2.NewClient("box@contoso.example", "revoked-token")
	err := c.Auth(bad)
	var se *gosmtp.SMTPError
	if !errors.As(err, &se) || se.Code != 535 {
		t.Fatalf("refused token: err = %v, want 535", err)
	}
	f := bad.Failure()
	if f == nil || f.Status != "401" || f.Schemes != "bearer" || f.Scope != "https://outlook.office.com/SMTP.Send" {
		t.Fatalf("refused token: failure = %+v", f)
	}
	good := xoauth2.NewClient("box@contoso.example", "static-good-token")
	if err := c.Auth(good); err != nil {
		t.Fatalf("good token after a refusal on the same connection: %v", err)
	}
	if err := c.SendMail("box@contoso.example", []string{"rcpt@example.net"},
		bytes.NewReader([]byte("Subject: xoauth2\r\n\r\nhello\r\n"))); err != nil {
		t.Fatalf("send after XOAUTH2: %v", err)
	}
	c.Quit()
	deadline := time.Now().Add(5 * time.Second)
	for len(peer.Accepted(t)) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	acc := peer.Accepted(t)
	if len(acc) != 1 || acc[0]["auth"] != "XOAUTH2" || acc[0]["user"] != "box@contoso.example" {
		t.Fatalf("accepted = %v", acc)
	}
}
