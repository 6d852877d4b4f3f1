package oauth

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/relay"
)

func TestClientCredentialsWithMock(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.options(ClientCredentials, e.proxy.URL))
	tok, err := s.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	info := DescribeToken(tok)
	if !info.JWT || info.Issuer != e.mock.Issuer {
		t.Fatalf("token info %+v", info)
	}
	if len(info.Scopes) != 1 || info.Scopes[0] != "https://outlook.office365.com/.default" {
		t.Errorf("scopes %v", info.Scopes)
	}
	if d := time.Until(info.Expiry); d < 50*time.Minute || d > 61*time.Minute {
		t.Errorf("expiry in %v", d)
	}
	reqs := e.proxy.tokenRequests()
	if len(reqs) != 1 {
		t.Fatalf("%d token requests", len(reqs))
	}
	// Client id and secret in the body (AuthStyleInParams), the client_credentials grant and scope.
	f := reqs[0]
	if f.Get("grant_type") != "client_credentials" || f.Get("client_id") != s.o.ClientID || f.Get("client_secret") != testClientSecret ||
		f.Get("scope") != "https://outlook.office365.com/.default" {
		t.Errorf("token request form %v", f.Encode() != "")
	}
	st := s.Status()
	if !st.Healthy || st.ValidUntil.IsZero() || st.LastRefresh.IsZero() || st.LastError != "" {
		t.Errorf("status %+v", st)
	}
	if n := testutil.ToFloat64(e.metrics.OAuthTokenRefreshes.WithLabelValues("m365")); n != 1 {
		t.Errorf("refreshes = %v", n)
	}
}

func TestManyConcurrentCallersCostOneTokenRequest(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.options(ClientCredentials, e.proxy.URL))
	const callers = 1000
	var wg sync.WaitGroup
	start := make(chan struct{})
	tokens := make([]string, callers)
	errs := make([]error, callers)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			tokens[i], errs[i] = s.Token(ctx)
		}()
	}
	close(start)
	wg.Wait()
	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if tokens[i] != tokens[0] || tokens[i] == "" {
			t.Fatalf("caller %d got a different token", i)
		}
	}
	if n := len(e.proxy.tokenRequests()); n != 1 {
		t.Fatalf("%d callers caused %d token requests at the mock, want 1", callers, n)
	}
	// And the cache serves the next thousand without a request.
	for range callers {
		if _, err := s.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(e.proxy.tokenRequests()); n != 1 {
		t.Fatalf("cached token not reused: %d requests", n)
	}
}

func TestRefreshAtLeastTenMinutesBeforeExpiry(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.options(ClientCredentials, e.proxy.URL))
	ctx := context.Background()
	if _, err := s.Token(ctx); err != nil {
		t.Fatal(err)
	}
	expiry := s.Status().ValidUntil
	if d := expiry.Sub(e.clock.Now()); d != time.Hour { // the mock's expires_in is 3600, on our clock
		t.Fatalf("valid for %v on the fake clock", d)
	}
	e.clock.Advance(time.Hour - RefreshMargin - time.Second) // 10 min + 1 s left: still cached
	if _, err := s.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.proxy.tokenRequests()); n != 1 {
		t.Fatalf("refreshed %v before expiry, earlier than needed: %d requests", RefreshMargin+time.Second, n)
	}
	e.clock.Advance(time.Second) // exactly 10 minutes left: due
	if _, err := s.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.proxy.tokenRequests()); n != 2 {
		t.Fatalf("not refreshed 10 minutes before expiry: %d requests", n)
	}
	if got := s.Status().ValidUntil; !got.After(expiry) {
		t.Fatalf("valid until %v, not extended beyond %v", got, expiry)
	}
}

func TestInvalidateOnlyDropsThatToken(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.options(ClientCredentials, e.proxy.URL))
	ctx := context.Background()
	t1, err := s.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The mock signs the same claims within one second into the same JWT: let the clock tick so
	// the next token differs, as Microsoft's always do.
	time.Sleep(1100 * time.Millisecond)
	s.Invalidate("some-other-token")
	if _, err := s.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.proxy.tokenRequests()); n != 1 {
		t.Fatalf("invalidating a different token caused a request (%d)", n)
	}
	s.Invalidate(t1)
	if _, err := s.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.proxy.tokenRequests()); n != 2 {
		t.Fatalf("Invalidate then Token: %d requests, want 2", n)
	}
	if t2, _ := s.Token(ctx); t2 == t1 {
		t.Fatal("the mock returned the same token twice; the stale-Invalidate check below would be void")
	}
	// A worker late with the old token must not throw away the new one.
	s.Invalidate(t1)
	if _, err := s.Token(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(e.proxy.tokenRequests()); n != 2 {
		t.Fatalf("a stale Invalidate dropped the fresh token: %d requests", n)
	}
}

func TestAuthorizationCodeWithPastedRedirectAndRotation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	o := e.options(AuthorizationCode, e.proxy.URL)
	s := e.source(t, o)
	a, err := s.BeginAuthorize()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(a.URL, "code_challenge_method=S256") || !strings.Contains(a.URL, "login_hint=support%40contoso.example") ||
		!strings.Contains(a.URL, "offline_access") || strings.Contains(a.URL, a.Verifier) {
		t.Fatalf("authorize URL %s", a.URL)
	}
	location := authorizeViaMock(t, a)
	if _, err := (&Authorization{State: "another"}).ParsePastedRedirect(location); err == nil {
		t.Fatal("a redirect with another state was accepted")
	}
	schemeless := strings.TrimPrefix(location, "http://")
	if c, err := a.ParsePastedRedirect(schemeless); err != nil || c == "" {
		t.Fatalf("redirect pasted without its scheme: %v", err)
	}
	code, err := a.ParsePastedRedirect("  " + location + "\n")
	if err != nil {
		t.Fatal(err)
	}
	// A wrong verifier is refused by the mock (PKCE is really checked).
	if _, err := s.Exchange(ctx, code, "wrong-verifier-wrong-verifier-wrong-verifier-0123"); err == nil {
		t.Fatal("exchange with a wrong verifier succeeded")
	}
	a, _ = s.BeginAuthorize()
	code, err = a.ParsePastedRedirect(authorizeViaMock(t, a))
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Exchange(ctx, code, a.Verifier)
	if err != nil {
		t.Fatal(err)
	}
	if !info.JWT || info.Expiry.IsZero() {
		t.Fatalf("account info %+v", info)
	}
	key := RefreshTokenKey("m365")
	sealed1 := e.store.get(key)
	if !strings.HasPrefix(sealed1, "local:") {
		t.Fatalf("refresh token stored as %q, want a sealed local: reference", sealed1[:min(len(sealed1), 10)])
	}
	rt1 := e.open(t, sealed1)
	if strings.Contains(sealed1, rt1) {
		t.Fatal("sealed value contains the refresh token")
	}
	exch := e.proxy.tokenRequests()
	last := exch[len(exch)-1]
	if last.Get("grant_type") != "authorization_code" || last.Get("code_verifier") != a.Verifier {
		t.Fatal("exchange did not send the PKCE verifier")
	}

	// Near expiry the refresh token is redeemed; the mock rotates it and the new one is persisted.
	e.clock.Advance(55 * time.Minute)
	if _, err := s.Token(ctx); err != nil {
		t.Fatal(err)
	}
	reqs := e.proxy.tokenRequests()
	if r := reqs[len(reqs)-1]; r.Get("grant_type") != "refresh_token" || r.Get("refresh_token") != rt1 {
		t.Fatalf("refresh used grant %q and not the stored refresh token", r.Get("grant_type"))
	}
	rt2 := e.open(t, e.store.get(key))
	if rt2 != e.proxy.lastIssued() || rt2 == rt1 {
		t.Fatal("the rotated refresh token was not persisted")
	}
	e.clock.Advance(55 * time.Minute)
	if _, err := s.Token(ctx); err != nil {
		t.Fatal(err)
	}
	reqs = e.proxy.tokenRequests()
	if r := reqs[len(reqs)-1]; r.Get("refresh_token") != rt2 {
		t.Fatal("second refresh did not use the rotated refresh token")
	}
	rt3 := e.open(t, e.store.get(key))

	// A restarted instance (a new Source on the same store) picks up the latest refresh token.
	s2 := e.source(t, o)
	if _, err := s2.Token(ctx); err != nil {
		t.Fatal(err)
	}
	reqs = e.proxy.tokenRequests()
	if r := reqs[len(reqs)-1]; r.Get("refresh_token") != rt3 {
		t.Fatal("a new Source did not use the persisted refresh token")
	}

	// A failed persist keeps the rotated token in memory and persists it at the next refresh.
	e.store.mu.Lock()
	e.store.fail = errStoreDown
	e.store.mu.Unlock()
	e.clock.Advance(55 * time.Minute)
	if _, err := s2.Token(ctx); err != nil {
		t.Fatalf("a store outage with a token in memory must not stop delivery: %v", err)
	}
	rt5 := e.proxy.lastIssued() // rotated while the store was down: only in memory
	if got := e.open(t, e.store.get(key)); got == rt5 {
		t.Fatal("persisted while the store was failing?")
	}
	e.store.mu.Lock()
	e.store.fail = nil
	e.store.mu.Unlock()
	e.clock.Advance(55 * time.Minute)
	if _, err := s2.Token(ctx); err != nil {
		t.Fatal(err)
	}
	reqs = e.proxy.tokenRequests()
	if reqs[len(reqs)-1].Get("refresh_token") != rt5 {
		t.Fatal("after a failed persist the Source did not use the newest refresh token it held in memory")
	}
	if got := e.open(t, e.store.get(key)); got != e.proxy.lastIssued() {
		t.Fatal("the newest refresh token was not persisted once the store was back")
	}
	if !strings.Contains(e.logs.String(), "rotated but not persisted") {
		t.Error("failed persist not logged")
	}
}

var errStoreDown = &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Msg: "store down", Reason: "store"}

func (e *env) open(t *testing.T, sealed string) string {
	t.Helper()
	sec, err := e.sealer.Open(context.Background(), sealed)
	if err != nil {
		t.Fatal(err)
	}
	return sec.Reveal()
}

func TestReceiveRedirectOnLoopback(t *testing.T) {
	e := newEnv(t)
	o := e.options(AuthorizationCode, e.mock.URL)
	addr := "127.0.0.1:" + itoa(freePort(t))
	o.RedirectURL = "http://" + addr + "/callback"
	s := e.source(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	run := func(visit func(location string) *http.Response) (string, error, *http.Response) {
		a, err := s.BeginAuthorize()
		if err != nil {
			t.Fatal(err)
		}
		type res struct {
			code string
			err  error
		}
		ch := make(chan res, 1)
		go func() { c, err := s.ReceiveRedirect(ctx, a); ch <- res{c, err} }()
		location := authorizeViaMock(t, a)
		resp := visit(location)
		r := <-ch
		return r.code, r.err, resp
	}
	get := func(u string) *http.Response {
		if err := waitPort(addr); err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	code, err, resp := run(func(loc string) *http.Response {
		// A stray request (favicon) is answered 404 and does not end the wait.
		if r := get("http://" + addr + "/favicon.ico"); r.StatusCode != 404 {
			t.Errorf("favicon: %s", r.Status)
		}
		return get(loc)
	})
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	if resp.StatusCode != 200 || !strings.Contains(body, "You can close this window") || strings.Contains(body, code) {
		t.Fatalf("browser page %s: %q", resp.Status, body)
	}
	a2, _ := s.BeginAuthorize()
	if _, err := s.Exchange(ctx, code, a2.Verifier); err == nil {
		t.Fatal("code exchanged with another authorization's verifier")
	}

	// A redirect with a forged state is refused, with a 400 page, and nothing is returned.
	_, err, resp = run(func(loc string) *http.Response {
		return get(strings.Replace(loc, "state=", "state=forged", 1))
	})
	if err == nil || !strings.Contains(err.Error(), "state does not match") {
		t.Fatalf("forged state: %v", err)
	}
	if resp.StatusCode != 400 {
		t.Fatalf("forged state page: %s", resp.Status)
	}
	resp.Body.Close()

	// A non-loopback redirect URL is never listened on.
	o.RedirectURL = "https://mailgate.example/callback"
	bad := e.source(t, o)
	a, _ := bad.BeginAuthorize()
	if _, err := bad.ReceiveRedirect(ctx, a); err == nil || !strings.Contains(err.Error(), "paste the redirect") {
		t.Fatalf("non-loopback redirect: %v", err)
	}
}

func TestTokenEndpointOutageDefersThenRecovers(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	direct := e.source(t, e.options(ClientCredentials, e.mock.URL))
	viaProxy := e.source(t, func() Options { o := e.options(ClientCredentials, e.proxy.URL); o.Server = "m365-proxied"; return o }())
	for _, s := range []*Source{direct, viaProxy} {
		if _, err := s.Token(ctx); err != nil {
			t.Fatal(err)
		}
	}
	e.mock.Stop()

	// Within the margin but before expiry, the old token keeps delivering while refresh fails.
	e.clock.Advance(52 * time.Minute)
	if tok, err := direct.Token(ctx); err != nil || tok == "" {
		t.Fatalf("still-valid token not used during the outage: %v", err)
	}
	if st := direct.Status(); !st.Healthy || st.Reason != "oauth_endpoint_unreachable" {
		t.Errorf("status during outage with a valid token: %+v", st)
	}

	e.clock.Advance(10 * time.Minute) // now expired
	for _, c := range []struct {
		s      *Source
		reason string
	}{{direct, "oauth_endpoint_unreachable"}, {viaProxy, "oauth_endpoint_unavailable"}} {
		_, err := c.s.Token(ctx)
		re, ok := relay.AsError(err)
		if !ok || !re.Temporary() || re.Code != 451 || re.Enhanced != relay.CodeTempAuth || re.Reason != c.reason {
			t.Fatalf("%s: want a temporary 451 4.7.0 %s, got %v", c.s.Server(), c.reason, err)
		}
		if relay.IsPermanent(err) || RemedyOf(err) == "" || !strings.Contains(re.Msg, RemedyOf(err)) {
			t.Fatalf("%s: error without remedy: %v", c.s.Server(), err)
		}
		st := c.s.Status()
		if st.Healthy || st.Reason != c.reason || st.Remedy == "" || st.LastError == "" {
			t.Fatalf("%s: status %+v", c.s.Server(), st)
		}
	}
	errs := testutil.ToFloat64(e.metrics.OAuthTokenErrors.WithLabelValues("m365", "oauth_endpoint_unreachable"))
	// During the pause the error is repeated without hammering the endpoint.
	_, err := direct.Token(ctx)
	if re, _ := relay.AsError(err); re == nil || re.RetryAfter <= 0 {
		t.Fatalf("paused error without RetryAfter: %v", err)
	}
	if n := testutil.ToFloat64(e.metrics.OAuthTokenErrors.WithLabelValues("m365", "oauth_endpoint_unreachable")); n != errs {
		t.Fatalf("a request was made during the pause (%v errors, was %v)", n, errs)
	}
	if !strings.Contains(e.logs.String(), `"remedy":"cannot reach the token endpoint 127.0.0.1:`) {
		t.Errorf("remedy not logged: %s", e.logs.String())
	}

	// The endpoint comes back on the same port.
	restartMock(t, e.mock)
	e.clock.Advance(11 * time.Second)
	for _, s := range []*Source{direct, viaProxy} {
		if _, err := s.Token(ctx); err != nil {
			t.Fatalf("%s did not recover: %v", s.Server(), err)
		}
		if st := s.Status(); !st.Healthy || st.LastError != "" {
			t.Fatalf("status after recovery %+v", st)
		}
	}
}

func TestNotAuthorizedYet(t *testing.T) {
	e := newEnv(t)
	s := e.source(t, e.options(AuthorizationCode, e.proxy.URL))
	st := s.Check(context.Background())
	if st.Healthy || st.Reason != "oauth_not_authorized" || !strings.Contains(st.Remedy, "mailgate oauth authorize --server m365") {
		t.Fatalf("status %+v", st)
	}
	if len(e.proxy.tokenRequests()) != 0 {
		t.Fatal("a token request without a refresh token")
	}
	// A sealed value copied from another server's row is refused.
	other, _ := e.sealer.Seal(context.Background(), RefreshTokenKey("other"), "rt-of-other")
	e.store.PutSecret(context.Background(), RefreshTokenKey("m365"), other)
	e.clock.Advance(time.Minute)
	_, err := s.Token(context.Background())
	if re, _ := relay.AsError(err); re == nil || re.Reason != "oauth_refresh_token_unavailable" {
		t.Fatalf("foreign sealed token: %v", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{
		{},
		{Server: "x", ClientID: "c", Tenant: "t", Flow: ClientCredentials},
		{Server: "x", ClientID: "c", Tenant: "t", Flow: AuthorizationCode},
		{Server: "x", ClientID: "c", Flow: "password"},
		{Server: "x", ClientID: "c", Tenant: "t", Flow: ClientCredentials, Provider: "google"},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	s, err := New(Options{Server: "x", ClientID: "c", Tenant: "contoso", Flow: ClientCredentials, ClientSecret: secretOf("s")})
	if err != nil {
		t.Fatal(err)
	}
	if s.cc.TokenURL != "https://login.microsoftonline.com/contoso/oauth2/v2.0/token" {
		t.Errorf("default token URL %s", s.cc.TokenURL)
	}
	if _, err := s.BeginAuthorize(); err == nil {
		t.Error("BeginAuthorize on client_credentials")
	}
}
