package oauth

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/kms"
	"github.com/mailgate/mailgate/relay/peertest"
)

// testCertificate makes an RSA key and a self-signed certificate valid until notAfter, as PEM.
func testCertificate(t *testing.T, notAfter time.Time) (certPEM []byte, keyPEM kms.Secret, key *rsa.PrivateKey) {
	t.Helper()
	c := peertest.NewClientCertificate(t, time.Until(notAfter))
	return c.CertPEM, kms.NewSecret(string(c.KeyPEM)), c.Key
}

// strictTokenEndpoint is a token endpoint that authenticates the client only by a client assertion, as
// Entra ID does for a certificate credential: RS256 signature by the registered certificate's key,
// x5t#S256 naming that certificate, iss = sub = client_id, aud = this endpoint, a short exp and a
// jti never seen before; a client_secret next to it is refused.
type strictTokenEndpoint struct {
	srv      *httptest.Server
	clientID string
	cert     *x509.Certificate
	mu       sync.Mutex
	jtis     map[string]bool
	grants   []string
	refused  []string
}

func newStrictTokenEndpoint(t *testing.T, clientID string, certPEM []byte) *strictTokenEndpoint {
	b, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	e := &strictTokenEndpoint{clientID: clientID, cert: cert, jtis: map[string]bool{}}
	e.srv = httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *strictTokenEndpoint) serve(w http.ResponseWriter, r *http.Request) {
	refuse := func(why string) {
		e.mu.Lock()
		e.refused = append(e.refused, why)
		e.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(401)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": "invalid_client", "error_codes": []int{700027},
			"error_description": "AADSTS700027: Client assertion failed signature validation. (" + why + ")"})
	}
	if err := r.ParseForm(); err != nil {
		refuse("form")
		return
	}
	f := r.PostForm
	switch {
	case f.Get("client_secret") != "" || r.Header.Get("Authorization") != "":
		refuse("client_secret sent with a certificate credential")
		return
	case f.Get("client_assertion_type") != ClientAssertionType:
		refuse("client_assertion_type")
		return
	case f.Get("client_id") != e.clientID:
		refuse("client_id")
		return
	}
	parts := strings.Split(f.Get("client_assertion"), ".")
	if len(parts) != 3 {
		refuse("not a JWT")
		return
	}
	var hdr map[string]string
	var claims struct {
		Aud, Iss, Sub, Jti string
		Exp, Nbf           int64
	}
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	if json.Unmarshal(hb, &hdr) != nil || json.Unmarshal(cb, &claims) != nil {
		refuse("JWT parts")
		return
	}
	thumb := sha256.Sum256(e.cert.Raw)
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	now := time.Now().Unix()
	e.mu.Lock()
	replay := e.jtis[claims.Jti]
	e.jtis[claims.Jti] = true
	e.mu.Unlock()
	switch {
	case hdr["alg"] != "RS256" || hdr["x5t#S256"] != base64.RawURLEncoding.EncodeToString(thumb[:]):
		refuse("header " + string(hb))
	case rsa.VerifyPKCS1v15(e.cert.PublicKey.(*rsa.PublicKey), crypto.SHA256, sum[:], sig) != nil:
		refuse("signature")
	case claims.Aud != e.srv.URL+"/token" || claims.Iss != e.clientID || claims.Sub != e.clientID:
		refuse("claims " + string(cb))
	case claims.Exp <= now || claims.Exp > now+600 || claims.Nbf > now+5:
		refuse("lifetime")
	case claims.Jti == "" || replay:
		refuse("jti replayed")
	default:
		e.mu.Lock()
		e.grants = append(e.grants, f.Get("grant_type"))
		n := len(e.grants)
		e.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"at-%d","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-%d"}`, n, n)
	}
}

// The client credentials and the refresh-token flows authenticate with a certificate: each token
// request carries a fresh, correctly signed assertion and no secret.
func TestCertificateCredential(t *testing.T) {
	const clientID = "11111111-2222-3333-4444-555555555555"
	certPEM, keyPEM, _ := testCertificate(t, time.Now().Add(365*24*time.Hour))
	cc, err := ParseClientCertificate(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ep := newStrictTokenEndpoint(t, clientID, certPEM)
	e := newEnv(t)
	ctx := context.Background()

	o := e.options(ClientCredentials, ep.srv.URL)
	o.ClientSecret, o.ClientCertificate, o.Now = kms.Secret{}, cc, nil
	s := e.source(t, o)
	if tok, err := s.Token(ctx); err != nil || tok != "at-1" {
		t.Fatalf("client credentials: %q %v (refused %v)", tok, err, ep.refused)
	}
	s.Invalidate("at-1")
	if tok, err := s.Token(ctx); err != nil || tok != "at-2" {
		t.Fatalf("second request (fresh jti): %q %v (refused %v)", tok, err, ep.refused)
	}

	o = e.options(AuthorizationCode, ep.srv.URL)
	o.ClientCertificate, o.Now = cc, nil // a configured secret is not sent beside the certificate
	sealed, err := e.sealer.Seal(ctx, RefreshTokenKey(o.Server), "rt-stored")
	if err != nil {
		t.Fatal(err)
	}
	e.store.PutSecret(ctx, RefreshTokenKey(o.Server), sealed)
	s = e.source(t, o)
	if tok, err := s.Token(ctx); err != nil || tok != "at-3" {
		t.Fatalf("refresh: %q %v (refused %v)", tok, err, ep.refused)
	}
	if strings.Join(ep.grants, ",") != "client_credentials,client_credentials,refresh_token" || len(ep.refused) != 0 {
		t.Fatalf("grants %v refused %v", ep.grants, ep.refused)
	}

	// A certificate Entra ID does not know (AADSTS700027) gets a remedy naming its thumbprint.
	other, otherKeyPEM, _ := testCertificate(t, time.Now().Add(time.Hour))
	occ, err := ParseClientCertificate(other, otherKeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	o = e.options(ClientCredentials, ep.srv.URL)
	o.ClientCertificate, o.Now = occ, nil
	_, err = e.source(t, o).Token(ctx)
	if re := RemedyOf(err); !strings.Contains(re, occ.Thumbprint()) || !strings.Contains(re, "upload the certificate") {
		t.Fatalf("unknown certificate: %v, remedy %q", err, re)
	}

	// Another key with the same certificate is refused by the endpoint's signature check.
	_, otherKey, _ := testCertificate(t, time.Now().Add(time.Hour))
	if _, err := ParseClientCertificate(certPEM, otherKey); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Fatalf("mismatched key accepted: %v", err)
	}
	if strings.Contains(fmt.Sprintf("%v %+v", cc, cc), "PRIVATE") {
		t.Fatal("the key prints")
	}
}

// The credential's expiry is a gauge and, through ExpiryProblem, a /readyz warning from 30 days and a
// failure from 7 days ahead; the earlier of certificate NotAfter and configured secret expiry counts.
func TestCredentialExpiry(t *testing.T) {
	now := time.Now()
	certPEM, keyPEM, _ := testCertificate(t, now.Add(20*24*time.Hour))
	cc, err := ParseClientCertificate(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	o := e.options(ClientCredentials, "https://login.example")
	o.ClientCertificate = cc
	s := e.source(t, o)
	if got := testutil.ToFloat64(e.metrics.OAuthCredentialExpiry.WithLabelValues("m365")); int64(got) != cc.Cert.NotAfter.Unix() {
		t.Fatalf("gauge %v, want %d", got, cc.Cert.NotAfter.Unix())
	}
	warn, fail := s.ExpiryProblem(now)
	if fail != "" || !strings.Contains(warn, "client certificate") || !strings.Contains(warn, "in 19 days") && !strings.Contains(warn, "in 20 days") {
		t.Fatalf("20 days ahead: warn %q fail %q", warn, fail)
	}
	if warn, fail := s.ExpiryProblem(now.Add(14 * 24 * time.Hour)); warn != "" || fail == "" {
		t.Fatalf("6 days ahead: warn %q fail %q", warn, fail)
	}
	o.SecretExpires = now.Add(100 * 24 * time.Hour)
	o.ClientCertificate = nil
	s = e.source(t, o)
	if warn, fail := s.ExpiryProblem(now); warn != "" || fail != "" {
		t.Fatalf("100 days ahead: warn %q fail %q", warn, fail)
	}
	if warn, _ := s.ExpiryProblem(now.Add(75 * 24 * time.Hour)); !strings.Contains(warn, "client secret") {
		t.Fatalf("secret 25 days ahead: %q", warn)
	}
}

// Judge tells, per line, whether a token fits its API: a Graph token on SMTP, Mail.Send instead of
// SMTP.SendAsApp, a delegated token signed in as another mailbox each get what to change; the right
// token is OK throughout; claims the token lacks are unknown, not failures.
func TestJudge(t *testing.T) {
	e := newEnv(t)
	smtpApp := e.source(t, e.options(ClientCredentials, "https://login.example"))
	o := e.options(ClientCredentials, "https://login.example")
	o.API = APIGraph
	graphApp := e.source(t, o)
	delegated := e.source(t, e.options(AuthorizationCode, "https://login.example"))
	now := time.Now()
	lines := func(vs []Verdict) string {
		var b []string
		for _, v := range vs {
			b = append(b, v.String())
		}
		return strings.Join(b, "\n")
	}
	cases := []struct {
		name string
		src  *Source
		info TokenInfo
		want []string // substrings, in order of the lines
	}{
		{"graph token on SMTP", smtpApp, TokenInfo{JWT: true, Audience: []string{"https://graph.microsoft.com"}, Roles: []string{"Mail.Send"}},
			[]string{"FIX  audience: this is a Microsoft Graph token", "FIX  permission: Mail.Send is a Microsoft Graph permission", "OK   mailbox"}},
		{"right SMTP app token", smtpApp, TokenInfo{JWT: true, Audience: []string{"https://outlook.office365.com"}, Roles: []string{"SMTP.SendAsApp"}},
			[]string{"OK   audience", "OK   permission: application permission SMTP.SendAsApp", "OK   mailbox"}},
		{"right Graph token", graphApp, TokenInfo{JWT: true, Audience: []string{"00000003-0000-0000-c000-000000000000"}, Roles: []string{"Mail.Send"}},
			[]string{"OK   audience", "OK   permission: application permission Mail.Send", "OK   mailbox"}},
		{"outlook token on Graph", graphApp, TokenInfo{JWT: true, Audience: []string{"https://outlook.office365.com"}, Roles: []string{"SMTP.SendAsApp"}},
			[]string{"FIX  audience: the token is for https://outlook.office365.com; Microsoft Graph needs https://graph.microsoft.com", "FIX  permission: roles SMTP.SendAsApp lack Mail.Send"}},
		{"delegated, wrong mailbox", delegated, TokenInfo{JWT: true, Audience: []string{"https://outlook.office.com"}, Scopes: []string{"SMTP.Send"}, Account: "other@contoso.example"},
			[]string{"OK   audience", "OK   permission: delegated permission SMTP.Send", "FIX  mailbox: signed in as other@contoso.example but server m365 sends as support@contoso.example"}},
		{"claims absent", smtpApp, TokenInfo{JWT: true},
			[]string{"?    audience", "?    permission", "OK   mailbox"}},
	}
	for _, c := range cases {
		got := lines(c.src.Judge(c.info, now))
		rest := got
		for _, w := range c.want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Fatalf("%s: want %q in order in:\n%s", c.name, w, got)
			}
			rest = rest[i+len(w):]
		}
	}
}

type recordingTransport struct{ form url.Values }

func (r *recordingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	b, _ := io.ReadAll(req.Body)
	r.form, _ = url.ParseQuery(string(b))
	return &http.Response{StatusCode: 200, Body: io.NopCloser(strings.NewReader("{}")), Header: http.Header{}, Request: req}, nil
}

// The asserting transport replaces a client secret on a token request by an assertion (whichever flow
// built the request) and leaves other requests alone.
func TestAssertingTransportReplacesSecret(t *testing.T) {
	certPEM, keyPEM, _ := testCertificate(t, time.Now().Add(time.Hour))
	cc, err := ParseClientCertificate(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingTransport{}
	at := &assertingTransport{base: rec, tokenURL: "https://login.example/t/oauth2/v2.0/token", clientID: "app", cert: cc, now: time.Now}
	body := url.Values{"grant_type": {"refresh_token"}, "client_id": {"app"}, "client_secret": {"s3cret"}, "refresh_token": {"rt"}}.Encode()
	req, _ := http.NewRequest("POST", "https://login.example/t/oauth2/v2.0/token", strings.NewReader(body))
	if _, err := at.RoundTrip(req); err != nil {
		t.Fatal(err)
	}
	if rec.form.Has("client_secret") || rec.form.Get("client_assertion_type") != ClientAssertionType ||
		rec.form.Get("client_assertion") == "" || rec.form.Get("refresh_token") != "rt" {
		t.Fatalf("token request sent as %v", rec.form)
	}
	req, _ = http.NewRequest("POST", "https://elsewhere.example/t/oauth2/v2.0/token", strings.NewReader(body))
	if _, err := at.RoundTrip(req); err != nil || rec.form.Get("client_secret") != "s3cret" || rec.form.Has("client_assertion") {
		t.Fatalf("a request to another endpoint was changed: %v %v", err, rec.form)
	}
}
