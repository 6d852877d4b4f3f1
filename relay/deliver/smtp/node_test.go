package smtp_test

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/smtp"
	"github.com/mailgate/mailgate/relay/peertest"
)

func nodeTransport(t *testing.T, peer *peertest.NodeSMTP, o smtp.Options) *harness {
	t.Helper()
	o.Host, o.Port = hostPort(t, peer.Addr)
	if o.RootCAs == nil {
		o.RootCAs = peer.Cert.Pool
	}
	return newTransport(t, o)
}

// waitAccepted waits for n accepted-message records from the Node server.
func waitAccepted(t *testing.T, peer *peertest.NodeSMTP, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		acc := peer.Accepted(t)
		if len(acc) >= n {
			return acc
		}
		if time.Now().After(deadline) {
			t.Fatalf("upstream accepted %d messages, want %d", len(acc), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func assertNoSecret(t *testing.T, h *harness, secrets ...string) {
	t.Helper()
	logs := h.logs.String()
	for _, s := range secrets {
		if strings.Contains(logs, s) {
			t.Fatalf("secret %q appears in the logs", s)
		}
	}
}

// STARTTLS with a certificate verified through RootCAs, AUTH LOGIN preferred, Force TLS satisfied.
func TestNodeStartTLSVerifiedAuthLogin(t *testing.T) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{User: "relay@contoso.example", Pass: "s3cret-Pa55"})
	h := nodeTransport(t, peer, smtp.Options{Auth: smtp.AuthLogin, Username: "relay@contoso.example", Password: "s3cret-Pa55"})

	rep, err := h.tr.Probe(ctxTimeout(t, 20*time.Second), true)
	if err != nil {
		t.Fatalf("probe: %v\n%s", err, rep)
	}
	if rep.TLS != "starttls" || !rep.CertVerified || rep.TLSVersion != "TLS 1.3" || rep.AuthMechanism != "LOGIN" ||
		rep.AuthResult != "ok" || !slices.Contains(rep.AuthOffered, "XOAUTH2") || !strings.Contains(rep.Banner, "mailgate test upstream") {
		t.Fatalf("probe report:\n%s", rep)
	}
	for i := range 3 {
		m := message("customer@example.net")
		m.ForceTLS = i%2 == 0
		mustDeliver(t, h.tr, m)
	}
	acc := waitAccepted(t, peer, 3)
	for _, a := range acc {
		if a["auth"] != "LOGIN" || a["tls"] != true || a["from"] != "support@example.com" {
			t.Fatalf("accepted record %v", a)
		}
	}
	// Probe's session was pooled and reused for all three messages.
	if got := testutil.ToFloat64(h.met.UpstreamConnections.WithLabelValues("upstream-test", "starttls")); got != 1 {
		t.Fatalf("starttls connections = %v, want 1", got)
	}
	assertNoSecret(t, h, "s3cret-Pa55")
}

func TestNodePlainWhenConfigured(t *testing.T) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{})
	h := nodeTransport(t, peer, smtp.Options{Auth: smtp.AuthPlain, Username: "user", Password: "pass"})
	mustDeliver(t, h.tr, message("customer@example.net"))
	if a := waitAccepted(t, peer, 1)[0]; a["auth"] != "PLAIN" {
		t.Fatalf("accepted %v", a)
	}
	// Exchange-like server without PLAIN: auth plain falls back to the LOGIN it offers.
	peer2 := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{NoPlain: true})
	h2 := nodeTransport(t, peer2, smtp.Options{Auth: smtp.AuthPlain, Username: "user", Password: "pass"})
	mustDeliver(t, h2.tr, message("customer@example.net"))
	if a := waitAccepted(t, peer2, 1)[0]; a["auth"] != "LOGIN" {
		t.Fatalf("accepted %v", a)
	}
}

func TestNodeWrongPasswordIsTemporary(t *testing.T) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{})
	h := nodeTransport(t, peer, smtp.Options{Auth: smtp.AuthLogin, Username: "user", Password: "wrong-Pa55"})
	res := h.tr.Deliver(ctxTimeout(t, 20*time.Second), message("customer@example.net"))
	re := setupErr(t, res.Errs[0])
	if relay.IsPermanent(re) || !strings.Contains(re.Msg, "535") {
		t.Fatal(re)
	}
	if !strings.Contains(h.logs.String(), "remedy") {
		t.Fatalf("no remedy logged:\n%s", h.logs)
	}
	if n := testutil.ToFloat64(h.met.UpstreamFailures.WithLabelValues("upstream-test", "auth")); n != 1 {
		t.Errorf("mailgate_upstream_connection_failures_total{stage=auth} = %v, want 1", n)
	}
	assertNoSecret(t, h, "wrong-Pa55")
	if strings.Contains(re.Error(), "wrong-Pa55") {
		t.Fatal("password in the error")
	}
}

// An untrusted certificate: Force TLS bounces without sending anything; credentials are not sent
// (temporary); opportunistic delivery without credentials still encrypts and delivers.
func TestNodeUntrustedCertificate(t *testing.T) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{})
	other := peertest.SelfSignedCert(t).Pool // trusts some other certificate only

	h := nodeTransport(t, peer, smtp.Options{RootCAs: other})
	m := message("a@example.net", "b@example.net")
	m.ForceTLS = true
	res := h.tr.Deliver(ctxTimeout(t, 20*time.Second), m)
	for _, err := range res.Errs {
		re := relayErr(t, err, 554, smtp.ReasonTLSRequired)
		if !relay.IsPermanent(err) || !strings.Contains(re.Msg, "not verified") {
			t.Fatal(re)
		}
	}
	rep, err := h.tr.Probe(ctxTimeout(t, 20*time.Second), true)
	if err == nil || rep.CertVerified || rep.CertError == "" || rep.TLS != "starttls" {
		t.Fatalf("probe with untrusted cert: %v\n%s", err, rep)
	}

	hc := nodeTransport(t, peer, smtp.Options{RootCAs: other, Auth: smtp.AuthLogin, Username: "user", Password: "pass"})
	res = hc.tr.Deliver(ctxTimeout(t, 20*time.Second), message("c@example.net"))
	re := setupErr(t, res.Errs[0])
	if !strings.Contains(re.Msg, "credentials not sent") {
		t.Fatal(re)
	}

	// The Node server demands AUTH from everyone, which is the relay's configuration problem: deferred.
	res = h.tr.Deliver(ctxTimeout(t, 20*time.Second), message("d@example.net"))
	setupErr(t, res.Errs[0])
	if len(peer.Accepted(t)) != 0 {
		t.Fatal("the Node server accepted a message")
	}
}

// Opportunistic TLS (no Force TLS, no credentials) accepts an unverified certificate, as Postfix's
// "may" level does: encrypted, delivered. (Scripted server: the Node peer always demands AUTH.)
func TestOpportunisticTLSAcceptsUnverifiedCertificate(t *testing.T) {
	f := startFake(t, &fakeUpstream{})
	host, port := hostPort(t, f.addr())
	h := newTransport(t, smtp.Options{Host: host, Port: port, RootCAs: peertest.SelfSignedCert(t).Pool})
	rep, err := h.tr.Probe(ctxTimeout(t, 10*time.Second), false)
	if err != nil || rep.TLS != "starttls" || rep.CertVerified || rep.CertError == "" {
		t.Fatalf("probe: %v\n%s", err, rep)
	}
	mustDeliver(t, h.tr, message("d@example.net"))
	if f.stat(".") != 1 {
		t.Fatalf("fake saw %d final dots", f.stat("."))
	}
	if got := testutil.ToFloat64(h.met.UpstreamConnections.WithLabelValues("upstream-test", "starttls")); got != 1 {
		t.Fatalf("starttls connections = %v", got)
	}
}

func toStrings(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

func TestNodePerRecipientReplies(t *testing.T) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{FailRcptRegex: "^bad", TempfailRcptRegex: "^later"})
	h := nodeTransport(t, peer, smtp.Options{Auth: smtp.AuthLogin, Username: "user", Password: "pass"})
	res := h.tr.Deliver(ctxTimeout(t, 20*time.Second), message("good@example.net", "bad@example.net", "later@example.net"))
	if res.Errs[0] != nil || !strings.HasPrefix(res.Reply, "250 ") {
		t.Fatalf("good recipient: %v reply %q", res.Errs[0], res.Reply)
	}
	if re := relayErr(t, res.Errs[1], 550, smtp.ReasonUpstream); !relay.IsPermanent(re) || !strings.Contains(re.Msg, "refused by test rule") {
		t.Fatal(re)
	}
	if re := relayErr(t, res.Errs[2], 451, smtp.ReasonUpstream); relay.IsPermanent(re) {
		t.Fatal(re)
	}
	if a := waitAccepted(t, peer, 1)[0]; !slices.Equal(toStrings(a["to"]), []string{"good@example.net"}) {
		t.Fatalf("accepted %v", a)
	}
}

func TestNodeAdvertisedSize(t *testing.T) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{MaxSize: 100})
	h := nodeTransport(t, peer, smtp.Options{Auth: smtp.AuthLogin, Username: "user", Password: "pass"})
	res := h.tr.Deliver(ctxTimeout(t, 20*time.Second), message("a@example.net"))
	if re := relayErr(t, res.Errs[0], 552, smtp.ReasonSize); !strings.Contains(re.Msg, "SIZE 100") {
		t.Fatal(re)
	}
	if len(peer.Accepted(t)) != 0 {
		t.Fatal("oversized message was sent")
	}
}

// XOAUTH2 with a static token the server knows.
func TestNodeXOAUTH2StaticToken(t *testing.T) {
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{StaticTokens: []string{"static-access-token-1"}})
	toks := &staticTokens{tokens: []string{"static-access-token-1"}}
	h := nodeTransport(t, peer, smtp.Options{Auth: smtp.AuthXOAUTH2, Tokens: toks, Mailbox: "box@contoso.example", Provider: smtp.ProviderMicrosoft})
	mustDeliver(t, h.tr, message("customer@example.net"))
	if a := waitAccepted(t, peer, 1)[0]; a["auth"] != "XOAUTH2" || a["user"] != "box@contoso.example" {
		t.Fatalf("accepted %v", a)
	}
	assertNoSecret(t, h, "static-access-token-1")
}

// mockToken fetches a client-credentials access token from oauth2-mock-server with a plain POST.
func mockToken(t *testing.T, mock *peertest.OAuthMock) string {
	t.Helper()
	resp, err := http.PostForm(mock.URL+"/token", url.Values{
		"grant_type": {"client_credentials"}, "client_id": {"mailgate"}, "client_secret": {"x"},
		"scope": {"https://outlook.office365.com/.default"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || tok.AccessToken == "" {
		t.Fatalf("token response: %v %+v", err, tok)
	}
	return tok.AccessToken
}

// XOAUTH2 with a JWT from the OAuth mock, verified by the upstream against the mock's JWKS; a refused
// token is invalidated and AUTH retried once with a fresh one; a token that stays bad defers.
func TestNodeXOAUTH2WithMockJWKS(t *testing.T) {
	mock := peertest.OAuth2Mock(t)
	peer := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{JWKSURL: mock.URL + "/jwks", Issuer: mock.Issuer})
	good := mockToken(t, mock)

	t.Run("good token", func(t *testing.T) {
		toks := &staticTokens{tokens: []string{good}}
		h := nodeTransport(t, peer, smtp.Options{Auth: smtp.AuthXOAUTH2, Tokens: toks, Mailbox: "box@contoso.example"})
		rep, err := h.tr.Probe(ctxTimeout(t, 20*time.Second), true)
		if err != nil || rep.AuthMechanism != "XOAUTH2" || rep.AuthResult != "ok" || !rep.CertVerified {
			t.Fatalf("probe: %v\n%s", err, rep)
		}
		mustDeliver(t, h.tr, message("customer@example.net"))
		if toks.fetched != 1 || len(toks.invalidated) != 0 {
			t.Fatalf("fetched %d invalidated %v", toks.fetched, toks.invalidated)
		}
		assertNoSecret(t, h, good)
	})
	t.Run("refused token then fresh one", func(t *testing.T) {
		toks := &staticTokens{tokens: []string{"expired.jwt.token", good}}
		h := nodeTransport(t, peer, smtp.Options{Auth: smtp.AuthXOAUTH2, Tokens: toks, Mailbox: "box@contoso.example"})
		mustDeliver(t, h.tr, message("customer@example.net"))
		if toks.fetched != 2 || !slices.Equal(toks.invalidated, []string{"expired.jwt.token"}) {
			t.Fatalf("fetched %d invalidated %v", toks.fetched, toks.invalidated)
		}
	})
	t.Run("always refused defers", func(t *testing.T) {
		toks := &staticTokens{tokens: []string{"revoked.jwt.token"}}
		h := nodeTransport(t, peer, smtp.Options{Auth: smtp.AuthXOAUTH2, Tokens: toks, Mailbox: "box@contoso.example"})
		before := len(peer.Accepted(t))
		for range 2 {
			res := h.tr.Deliver(ctxTimeout(t, 20*time.Second), message("a@example.net", "b@example.net"))
			for _, err := range res.Errs {
				re := setupErr(t, err)
				if relay.IsPermanent(re) || re.Code != 535 {
					t.Fatal(re)
				}
			}
		}
		if toks.fetched != 4 || len(toks.invalidated) != 2 {
			t.Fatalf("fetched %d invalidated %v: want one retry per attempt", toks.fetched, toks.invalidated)
		}
		if len(peer.Accepted(t)) != before {
			t.Fatal("message accepted without valid auth")
		}
		rep, err := h.tr.Probe(ctxTimeout(t, 20*time.Second), false)
		if err == nil || rep.TokenFailure == nil || rep.TokenFailure.Status != "401" {
			t.Fatalf("probe: %v\n%s", err, rep)
		}
		assertNoSecret(t, h, "revoked.jwt.token")
	})
	t.Run("token source failure defers", func(t *testing.T) {
		toks := &staticTokens{err: &relay.Error{Code: 451, Enhanced: "4.7.0", Reason: "invalid_grant", Msg: "AADSTS700082: refresh token expired"}}
		h := nodeTransport(t, peer, smtp.Options{Auth: smtp.AuthXOAUTH2, Tokens: toks, Mailbox: "box@contoso.example"})
		res := h.tr.Deliver(ctxTimeout(t, 20*time.Second), message("a@example.net"))
		re := setupErr(t, res.Errs[0])
		if !strings.Contains(re.Msg, "AADSTS700082") {
			t.Fatal(re)
		}
		toks.err = errors.New("token endpoint unreachable")
		res = h.tr.Deliver(ctxTimeout(t, 20*time.Second), message("a@example.net"))
		setupErr(t, res.Errs[0])
	})
}
