package oauth

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestNoSecretInLogsErrorsStatusOrMetrics runs every flow against the real mock with known secret
// values and greps everything an operator could see for each of them.
func TestNoSecretInLogsErrorsStatusOrMetrics(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var seen []string // operator-visible text
	var secrets = []string{testClientSecret}

	s := e.source(t, e.options(AuthorizationCode, e.proxy.URL))
	if st := s.Check(ctx); st.Healthy {
		t.Fatal("healthy before authorization")
	}
	a, err := s.BeginAuthorize()
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, a.Verifier)
	seen = append(seen, fmt.Sprintf("%v %+v %#v %s", a, a, a, *a))
	loc := authorizeViaMock(t, a)
	code, err := a.ParsePastedRedirect(loc)
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, code)
	if _, err := (&Authorization{State: "x"}).ParsePastedRedirect(loc); err != nil {
		seen = append(seen, err.Error())
	}
	if _, err := a.ParsePastedRedirect(strings.Replace(loc, "state=", "state=zz", 1)); err != nil {
		seen = append(seen, err.Error())
	}
	if _, err := a.ParsePastedRedirect("http://[::1" + loc); err != nil {
		seen = append(seen, err.Error())
	}
	if _, err := s.Exchange(ctx, code, a.Verifier+"x"); err != nil {
		seen = append(seen, err.Error(), fmt.Sprintf("%+v", err))
	}
	a, _ = s.BeginAuthorize()
	secrets = append(secrets, a.Verifier)
	code, err = a.ParsePastedRedirect(authorizeViaMock(t, a))
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, code)
	info, err := s.Exchange(ctx, code, a.Verifier)
	if err != nil {
		t.Fatal(err)
	}
	seen = append(seen, info.String(), fmt.Sprintf("%+v", info))
	// The code is single-use: redeeming it again fails, and says so without the code.
	if _, err := s.Exchange(ctx, code, a.Verifier); err != nil {
		seen = append(seen, err.Error())
	}
	for range 3 {
		e.clock.Advance(55 * time.Minute)
		tok, err := s.Token(ctx)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, tok)
		s.Invalidate(tok)
	}
	cc := e.source(t, func() Options { o := e.options(ClientCredentials, e.proxy.URL); o.Server = "m365-app"; return o }())
	tok, err := cc.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	secrets = append(secrets, tok)
	e.mock.Stop()
	e.clock.Advance(2 * time.Hour)
	for _, src := range []*Source{s, cc} {
		if _, err := src.Token(ctx); err != nil {
			seen = append(seen, err.Error(), fmt.Sprintf("%+v", err), RemedyOf(err))
		}
		st, _ := json.Marshal(src.Status())
		seen = append(seen, string(st), fmt.Sprintf("%+v %#v %v", src, src, src))
	}
	secrets = append(secrets, e.proxy.issued...)

	seen = append(seen, e.logs.String())
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				seen = append(seen, l.GetValue())
			}
		}
	}
	all := strings.Join(seen, "\n")
	if len(e.proxy.issued) < 4 || len(secrets) < 12 {
		t.Fatalf("the flow did not run far enough to mean anything (%d refresh tokens)", len(e.proxy.issued))
	}
	for _, secret := range secrets {
		if secret == "" {
			t.Fatal("empty secret collected")
		}
		if strings.Contains(all, secret) {
			t.Errorf("a secret (%d chars, starts %.4s) appears in operator output", len(secret), secret)
		}
		// JWTs: also their signature part, in case a token was shown in pieces.
		if parts := strings.Split(secret, "."); len(parts) == 3 && strings.Contains(all, parts[2]) {
			t.Errorf("a token signature appears in operator output")
		}
	}
	if !strings.Contains(all, "oauth token obtained") || !strings.Contains(all, "oauth_endpoint_unavailable") {
		t.Fatalf("logs did not capture the flow: %s", e.logs.String())
	}
}
