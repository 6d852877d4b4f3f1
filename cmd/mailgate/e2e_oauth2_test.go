package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// tokenProxy is a reverse proxy in front of oauth2-mock-server. It remembers every secret that
// crosses the token endpoint in either direction (authorization code, PKCE verifier, client secret,
// access, ID and refresh tokens) so a test can prove none of them reaches an output or the store in
// plain text, and it can be switched to answer 503 (a token endpoint outage).
type tokenProxy struct {
	url      string // where the proxy listens, once started
	mu       sync.Mutex
	down     bool
	requests int // token requests answered by the mock
	refused  int // token requests answered 503 while down
	secrets  []string
	refresh  []string // refresh tokens issued by the mock
	redeemed []string // refresh tokens presented to the mock (grant_type=refresh_token)
}

func (p *tokenProxy) start(t *testing.T, mockURL string) string {
	t.Helper()
	target, err := url.Parse(mockURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(r *http.Response) error {
		if r.Request.URL.Path != "/token" {
			return nil
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		var tok struct {
			AccessToken  string `json:"access_token"`
			IDToken      string `json:"id_token"`
			RefreshToken string `json:"refresh_token"`
		}
		if json.Unmarshal(b, &tok) == nil {
			p.mu.Lock()
			p.keep(tok.AccessToken, tok.IDToken, tok.RefreshToken)
			if tok.RefreshToken != "" {
				p.refresh = append(p.refresh, tok.RefreshToken)
			}
			p.mu.Unlock()
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/token" {
			body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			r.Body = io.NopCloser(bytes.NewReader(body))
			form, _ := url.ParseQuery(string(body))
			p.mu.Lock()
			p.keep(form.Get("code"), form.Get("code_verifier"), form.Get("refresh_token"), form.Get("client_secret"))
			if rt := form.Get("refresh_token"); rt != "" {
				p.redeemed = append(p.redeemed, rt)
			}
			down := p.down
			if down {
				p.refused++
			} else {
				p.requests++
			}
			p.mu.Unlock()
			if down {
				http.Error(w, "service unavailable (test outage)", http.StatusServiceUnavailable)
				return
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return srv.URL
}

// keep remembers non-empty secret values; p.mu is held.
func (p *tokenProxy) keep(vals ...string) {
	for _, v := range vals {
		if v != "" {
			p.secrets = append(p.secrets, v)
		}
	}
}

func (p *tokenProxy) setDown(down bool) {
	p.mu.Lock()
	p.down = down
	p.mu.Unlock()
}

func (p *tokenProxy) counts() (answered, refused int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests, p.refused
}

func (p *tokenProxy) seen() (secrets, issued, redeemed []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.secrets...), append([]string(nil), p.refresh...), append([]string(nil), p.redeemed...)
}

// relayChannels routes the Support channel to transport, for the trusted-network principal that
// smtpConversation submits as.
func relayChannels(transport string) string {
	return fmt.Sprintf(`
channels:
  - name: Support
    from: support@example.com
    display_name: Example Support
    business_unit: BU
    transport: %s
    outbound_flow: true
    force_tls: true
`+supportRoles+`trusted_networks:
  - cidr: 127.0.0.0/8
    principal: crm-app
    role: agent
    business_unit: BU
`, transport)
}

// oauthPeers is the XOAUTH2 setup of these tests: oauth2-mock-server behind a tokenProxy, and Node's
// smtp-server verifying each token against the mock's JWKS (PLAIN hidden, as Exchange Online).
type oauthPeers struct {
	mock  *peertest.OAuthMock
	proxy *tokenProxy
	node  *peertest.NodeSMTP
}

func startOAuthPeers(t *testing.T, tokenEndpointDown bool) *oauthPeers {
	t.Helper()
	p := &oauthPeers{mock: peertest.OAuth2Mock(t), proxy: &tokenProxy{}}
	p.proxy.setDown(tokenEndpointDown)
	p.proxy.start(t, p.mock.URL)
	p.node = peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{JWKSURL: p.mock.URL + "/jwks", Issuer: p.mock.Issuer, NoPlain: true})
	return p
}

// server is the smtp_servers section for the Node server with microsoft-oauth through the proxy;
// serverExtra and oauthExtra are further YAML lines of the server (4 spaces) and its oauth (6 spaces).
func (p *oauthPeers) server(serverExtra, oauthExtra string) string {
	host, port, _ := net.SplitHostPort(p.node.Addr)
	return fmt.Sprintf(`
smtp_servers:
  - name: m365
    host: %s
    port: %s
    provider: microsoft
    auth: microsoft-oauth
    ca_file: %s
%s    oauth:
      tenant_id: contoso-tenant
      client_id: mailgate-e2e
      client_secret: env:MG_E2E_CLIENT_SECRET
      mailbox: sender@contoso.example
      token_url: %s/token
%s`, host, port, p.node.Cert.CertFile, serverExtra, p.proxy.url, oauthExtra)
}

// submitRcpt is the envelope recipient smtpConversation always uses.
const submitRcpt = "customer@example.net"

// submitOne submits one message with subject as the trusted-network principal and returns the replies.
func submitOne(t *testing.T, in *instance, subject string) string {
	t.Helper()
	out := smtpConversation(t, in.smtp, fmt.Sprintf("From: support@example.com\r\nTo: %s\r\nSubject: %s\r\n\r\nbody\r\n.\r\n", submitRcpt, subject))
	if !strings.Contains(out, "250 2.0.0 queued") {
		t.Fatalf("submission refused:\n%s", out)
	}
	return out
}

// adminGet fetches an admin path and returns the status and body.
func adminGet(t *testing.T, in *instance, path string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + in.admin + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricSum adds up the samples of a Prometheus series whose labels contain every one of labels.
func metricSum(exposition, name string, labels ...string) float64 {
	var sum float64
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
			sum += v
		}
	}
	return sum
}

// runBounded runs the binary with stdin and extra environment, killing it after timeout, and returns
// its combined output and exit code (-1 when it had to be killed).
func runBounded(t *testing.T, timeout time.Duration, env []string, stdin string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(append(os.Environ(), "AWS_EC2_METADATA_DISABLED=true"), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		return out.String(), -1
	}
	return out.String(), exitCode(t, err)
}

// assertNoSecret fails when any secret value, or a recognisable tail of a long one, appears in any of
// the named outputs. The failure names the output and the kind of value, never the value.
func assertNoSecret(t *testing.T, outputs map[string]string, secrets map[string][]string) {
	t.Helper()
	checked := 0
	for kind, vals := range secrets {
		for _, s := range vals {
			if len(s) < 8 {
				t.Fatalf("test bug: %s value too short to search for", kind)
			}
			checked++
			for where, text := range outputs {
				if strings.Contains(text, s) {
					t.Errorf("a %s appears in %s", kind, where)
				} else if len(s) >= 32 && strings.Contains(text, s[len(s)-24:]) {
					t.Errorf("part of a %s appears in %s", kind, where)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("test bug: no secret to search for")
	}
}

// nodeOutput is everything the Node upstream printed (its log: accepted records and errors).
func nodeOutput(t *testing.T, node *peertest.NodeSMTP) string {
	t.Helper()
	b, err := os.ReadFile(node.Log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// authorizePaste runs `mailgate oauth authorize --server NAME --paste` as a subprocess: it reads the
// authorize URL the command prints, follows it to oauth2-mock-server (whose /authorize redirects
// straight to the redirect URL with a code), and pastes the Location back on stdin, as an operator
// would from a browser's address bar. It returns the command's output and exit code.
func authorizePaste(t *testing.T, in *instance, server string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd, stdin, stdout, stderr := startAuthorize(ctx, t, in, server, "--paste")
	var mu sync.Mutex
	var out strings.Builder
	urls := make(chan string, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		r := bufio.NewReader(stdout)
		for {
			line, err := r.ReadString('\n')
			mu.Lock()
			out.WriteString(line)
			mu.Unlock()
			if u := strings.TrimSpace(line); strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://") {
				select {
				case urls <- u:
				default:
				}
			}
			if err != nil {
				return
			}
		}
	}()
	var authURL string
	select {
	case authURL = <-urls:
	case <-ctx.Done():
		t.Fatalf("oauth authorize printed no URL:\n%s%s", out.String(), stderr.String())
	}
	u, err := url.Parse(authURL)
	if err != nil {
		t.Fatalf("authorize URL does not parse: %v", err)
	}
	q := u.Query()
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("state") == "" || q.Get("response_type") != "code" {
		t.Errorf("authorize URL lacks PKCE S256, state or response_type=code: %s", u.Redacted())
	}
	// The "browser": do not follow the redirect (nothing listens on the redirect URL with --paste).
	browser := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := browser.Get(authURL)
	if err != nil {
		t.Fatalf("GET authorize URL: %v", err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode/100 != 3 || loc == "" {
		t.Fatalf("authorize endpoint answered %d without a redirect", resp.StatusCode)
	}
	if _, err := io.WriteString(stdin, loc+"\n"); err != nil {
		t.Fatalf("paste: %v", err)
	}
	stdin.Close()
	<-copied
	werr := cmd.Wait()
	mu.Lock()
	all := out.String() + stderr.String()
	mu.Unlock()
	if ctx.Err() != nil {
		t.Fatalf("oauth authorize did not finish in time:\n%s", all)
	}
	return all, exitCode(t, werr)
}

// storeBytes is the SQLite store as it is on disk: the database file and its WAL and shared memory.
func storeBytes(t *testing.T, in *instance) string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(in.dir, "mailgate.db*"))
	if len(files) == 0 {
		t.Fatal("no store file")
	}
	var all []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return string(all)
}

// TestOAuthAuthorizationCodePasted signs in with `oauth authorize --paste` against oauth2-mock-server
// (PKCE, state), stores the refresh token sealed with a local keyring, shows the credential healthy in
// `oauth status`, then the daemon redeems the stored refresh token and relays through XOAUTH2 to Node's
// smtp-server, which verifies the JWT against the mock's JWKS. No refresh token is in the SQLite
// file in plain text, and no secret reaches any output.
func TestOAuthAuthorizationCodePasted(t *testing.T) {
	peers := startOAuthPeers(t, false)
	mock, proxy, node := peers.mock, peers.proxy, peers.node
	redirect := fmt.Sprintf("http://localhost:%d/callback", peertest.FreePort(t))
	in := newInstance(t, "\nkms:\n  keyring: {{DIR}}/keyring.json"+peers.server("", fmt.Sprintf(
		"      flow: authorization_code\n      authorize_url: %s/authorize\n      redirect_url: %s\n", mock.URL, redirect))+relayChannels("m365"))
	in.extraEnv = []string{"MG_E2E_CLIENT_SECRET=" + clientSecret}
	outputs := map[string]string{}

	out, code := in.mailgate("secret", "keygen", filepath.Join(in.dir, "keyring.json"))
	outputs["secret keygen"] = out
	if code != 0 {
		t.Fatalf("secret keygen: exit %d\n%s", code, out)
	}

	// Before sign-in, status says what to do.
	out, code = runBounded(t, 30*time.Second, in.extraEnv, "", "oauth", "status", "--config", in.config)
	outputs["oauth status (before)"] = out
	if code != 1 || !strings.Contains(out, "oauth authorize --server m365") || !strings.Contains(out, "false") ||
		!strings.Contains(out, "1 of 1 credential(s) unhealthy") || !strings.Contains(out, "no daemon answered") ||
		!strings.Contains(out, "state of: this process") {
		t.Errorf("oauth status before sign-in: exit %d, want 1, unhealthy with the authorize remedy\n%s", code, out)
	}

	out, code = authorizePaste(t, in, "m365")
	outputs["oauth authorize"] = out
	if code != 0 {
		t.Fatalf("oauth authorize: exit %d\n%s", code, out)
	}
	var info struct {
		JWT    bool      `json:"jwt"`
		Expiry time.Time `json:"expiry"`
		Issuer string    `json:"issuer"`
	}
	if i := strings.LastIndex(out, "\n{"); i < 0 || json.Unmarshal([]byte(strings.SplitN(out[i+1:], "\n", 2)[0]), &info) != nil {
		t.Fatalf("oauth authorize printed no token description:\n%s", out)
	}
	if !strings.Contains(out, "authorized m365: ") || !strings.Contains(out, "expires ") || !strings.Contains(out, "refresh token stored encrypted in") {
		t.Errorf("oauth authorize output lacks the account line, expiry or storage note:\n%s", out)
	}
	if !info.JWT || info.Issuer != mock.Issuer || time.Until(info.Expiry) < 30*time.Minute || time.Until(info.Expiry) > 2*time.Hour {
		t.Errorf("described token: %+v (want a JWT from %s expiring in about an hour)", info, mock.Issuer)
	}
	t.Logf("oauth authorize:\n%s", out)
	if answered, _ := proxy.counts(); answered != 1 {
		t.Errorf("sign-in made %d token requests, want 1 (the code exchange)", answered)
	}

	// A fresh process: status redeems the stored refresh token (the mock rotates it) and reports healthy.
	out, code = runBounded(t, 30*time.Second, in.extraEnv, "", "oauth", "status", "--config", in.config)
	outputs["oauth status"] = out
	var row []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 3 && f[0] == "m365" {
			row = f
		}
	}
	if code != 0 || row == nil || row[1] != "authorization_code" || row[2] != "sender@contoso.example" || row[3] != "true" {
		t.Fatalf("oauth status after sign-in: exit %d, want m365 healthy\n%s", code, out)
	}
	t.Logf("oauth status:\n%s", out)

	in.start()
	outputs["smtp replies"] = submitOne(t, in, "delegated oauth")
	waitFor(t, 30*time.Second, "the message at the XOAUTH2 upstream", func() bool { return len(node.Accepted(t)) >= 1 })
	rec := node.Accepted(t)[0]
	if rec["auth"] != "XOAUTH2" || rec["user"] != "sender@contoso.example" || rec["tls"] != true {
		t.Fatalf("upstream session: %v", rec)
	}
	// The daemon adopts the access token the status command obtained and stored (sealed): one token
	// request per credential for every process sharing the store.
	if answered, _ := proxy.counts(); answered != 2 {
		t.Errorf("%d token requests, want 2 (code exchange, status refresh; the daemon adopts the stored token)", answered)
	}
	// With the daemon running, status reports the daemon's token (GET /oauth) and requests none itself.
	out, code = runBounded(t, 30*time.Second, in.extraEnv, "", "oauth", "status", "--config", in.config)
	outputs["oauth status (daemon)"] = out
	if code != 0 || !strings.Contains(out, "state of: the running daemon at ") || strings.Contains(out, "no daemon answered") {
		t.Errorf("oauth status with the daemon running: exit %d\n%s", code, out)
	}
	if answered, _ := proxy.counts(); answered != 2 {
		t.Errorf("oauth status with the daemon running made a token request of its own (%d in all, want 2)", answered)
	}

	secrets, refresh, redeemed := proxy.seen()
	if len(refresh) != 2 {
		t.Fatalf("the mock issued %d refresh tokens, want 2", len(refresh))
	}
	// The refresh presented the newest refresh token: the one from the code exchange.
	if len(redeemed) != 1 || redeemed[0] != refresh[0] {
		t.Errorf("refresh tokens redeemed were not the newest persisted ones (%d redeemed)", len(redeemed))
	}
	db := storeBytes(t, in)
	if !strings.Contains(db, "oauth/m365/refresh_token") {
		t.Fatal("the store holds no refresh token row for m365")
	}
	for i, rt := range refresh {
		if strings.Contains(db, rt) {
			t.Errorf("refresh token %d of %d is in the SQLite store in plain text", i+1, len(refresh))
		}
	}

	// Re-consent through the redirect URL's loopback listener (the browser on this machine follows the
	// provider's redirect to it) while nothing is pasted.
	out, code = authorizeListener(t, in, "m365")
	outputs["oauth authorize (listener)"] = out
	if code != 0 || !strings.Contains(out, "authorized m365: ") {
		t.Errorf("oauth authorize through the loopback listener: exit %d\n%s", code, out)
	}
	secrets, _, _ = proxy.seen()

	_, outputs["/metrics"] = adminGet(t, in, "/metrics")
	_, outputs["/readyz"] = adminGet(t, in, "/readyz")
	outputs["daemon log"] = in.logs()
	outputs["node log"] = nodeOutput(t, node)
	assertNoSecret(t, outputs, map[string][]string{"client secret": {clientSecret}, "token-endpoint value": secrets})
}

// startAuthorize starts `mailgate oauth authorize --server server [extra...]` with pipes for stdin
// and stdout; stderr is collected.
func startAuthorize(ctx context.Context, t *testing.T, in *instance, server string, extra ...string) (*exec.Cmd, io.WriteCloser, io.Reader, *bytes.Buffer) {
	t.Helper()
	cmd := exec.CommandContext(ctx, binary, append([]string{"oauth", "authorize", "--config", in.config, "--server", server}, extra...)...)
	cmd.Env = append(append(os.Environ(), "AWS_EC2_METADATA_DISABLED=true"), in.extraEnv...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &bytes.Buffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, stdin, stdout, stderr
}

// authorizeListener runs `mailgate oauth authorize` without --paste and with nothing on stdin, then
// plays the browser: it follows the authorize URL's redirects, ending at the command's loopback
// listener on the redirect URL.
func authorizeListener(t *testing.T, in *instance, server string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd, stdin, stdout, stderr := startAuthorize(ctx, t, in, server)
	stdin.Close() // nothing pasted: the listener must do
	var out strings.Builder
	r := bufio.NewReader(stdout)
	for {
		line, err := r.ReadString('\n')
		out.WriteString(line)
		if u := strings.TrimSpace(line); strings.HasPrefix(u, "http") {
			// The listener may need a moment to bind after the URL is printed.
			var resp *http.Response
			for i := 0; i < 50; i++ {
				if resp, err = http.Get(u); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("browser: %v", err)
			}
			resp.Body.Close()
			break
		}
		if err != nil {
			t.Fatalf("oauth authorize printed no URL:\n%s%s", out.String(), stderr.String())
		}
	}
	rest, _ := io.ReadAll(r)
	out.Write(rest)
	code := exitCode(t, cmd.Wait()) // stderr is complete only after Wait
	return out.String() + stderr.String(), code
}

// TestOAuthTokenEndpointOutage: with the token endpoint answering 503, a submitted message is
// deferred (never bounced), the failure is counted and /readyz names the server and the remedy; when
// the endpoint is back the message is delivered (after the Source's 10 s pause) and /readyz is ready.
func TestOAuthTokenEndpointOutage(t *testing.T) {
	peers := startOAuthPeers(t, true)
	proxy, node := peers.proxy, peers.node
	in := newInstance(t, peers.server("", "")+relayChannels("m365"))
	in.extraEnv = []string{"MG_E2E_CLIENT_SECRET=" + clientSecret}
	in.start()
	outputs := map[string]string{}

	if status, body := adminGet(t, in, "/readyz"); status != http.StatusOK {
		t.Fatalf("/readyz before any token request: %d\n%s", status, body)
	}
	outputs["smtp replies"] = submitOne(t, in, "during the outage")
	waitFor(t, 20*time.Second, "a deferral in the log", func() bool { return strings.Contains(in.logs(), "msg=deferred") })
	if _, refused := proxy.counts(); refused == 0 {
		t.Fatal("the daemon deferred without asking the token endpoint")
	}
	var deferLine string
	for _, l := range strings.Split(in.logs(), "\n") {
		if strings.Contains(l, "msg=deferred") {
			deferLine = l
			break
		}
	}
	if !strings.Contains(deferLine, "oauth_endpoint_unavailable") && !strings.Contains(deferLine, "4.7.0") {
		t.Errorf("the deferral does not say why:\n%s", deferLine)
	}
	if !strings.Contains(in.logs(), "msg=\"oauth token error\"") || !strings.Contains(in.logs(), "remedy=") {
		t.Errorf("no oauth token error line with a remedy in the log:\n%s", in.logs())
	}

	_, m := adminGet(t, in, "/metrics")
	if v := metricSum(m, "mailgate_oauth_token_errors_total", `server="m365"`, `reason="oauth_endpoint_unavailable"`); v <= 0 {
		t.Errorf("mailgate_oauth_token_errors_total{server=m365,reason=oauth_endpoint_unavailable} = %v, want > 0", v)
	}
	status, ready := adminGet(t, in, "/readyz")
	outputs["/readyz (outage)"] = ready
	if status != http.StatusServiceUnavailable || !strings.Contains(ready, "FAIL oauth m365") || !strings.Contains(ready, "HTTP 503") ||
		!strings.Contains(ready, "mail is deferred and retried") {
		t.Errorf("/readyz during the outage: %d, want 503 naming m365, the cause and the remedy\n%s", status, ready)
	}
	t.Logf("/readyz during the outage:\n%s\ndeferral: %s", ready, deferLine)
	out, code := in.mailgate("bounces", "list", "--config", in.config)
	outputs["bounces list (outage)"] = out
	if code != 0 || strings.Contains(out, submitRcpt) {
		t.Fatalf("bounces list during the outage: exit %d\n%s", code, out)
	}
	if n := len(node.Accepted(t)); n != 0 {
		t.Fatalf("%d messages delivered without a token", n)
	}

	proxy.setDown(false)
	// The Source pauses 10 s after a failure; the queue retries at most every second.
	waitFor(t, 25*time.Second, "delivery once the token endpoint is back", func() bool { return len(node.Accepted(t)) >= 1 })
	rec := node.Accepted(t)[0]
	if rec["auth"] != "XOAUTH2" || rec["subject"] != "during the outage" || fmt.Sprint(rec["to"]) != "["+submitRcpt+"]" {
		t.Fatalf("upstream session: %v", rec)
	}
	waitFor(t, 10*time.Second, "/readyz ready again", func() bool { s, _ := adminGet(t, in, "/readyz"); return s == http.StatusOK })
	out, code = in.mailgate("bounces", "list", "--config", in.config)
	outputs["bounces list"] = out
	if code != 0 || strings.Contains(out, submitRcpt) {
		t.Fatalf("bounces list after delivery: exit %d\n%s", code, out)
	}
	if answered, _ := proxy.counts(); answered != 1 {
		t.Errorf("%d token requests reached the mock after the outage, want 1", answered)
	}
	if len(node.Accepted(t)) != 1 {
		t.Errorf("%d deliveries, want exactly 1", len(node.Accepted(t)))
	}

	_, outputs["/metrics"] = adminGet(t, in, "/metrics")
	outputs["daemon log"] = in.logs()
	outputs["node log"] = nodeOutput(t, node)
	secrets, _, _ := proxy.seen()
	assertNoSecret(t, outputs, map[string][]string{"client secret": {clientSecret}, "token-endpoint value": secrets})
}
