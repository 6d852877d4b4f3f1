package oauth

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
	"github.com/mailgate/mailgate/relay/store"
)

// fleet builds n Sources for one credential, each an "instance" with its own connection pool to one
// shared PostgreSQL store (the store is their Fleet and SecretStore).
func (e *env) fleet(t *testing.T, n int, flow Flow) []*Source {
	t.Helper()
	dsn := peertest.PostgresSchema(t)
	var out []*Source
	for range n {
		st, err := store.OpenPostgres(context.Background(), dsn, store.PostgresOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		o := e.options(flow, e.proxy.URL)
		o.Store, o.Fleet = st, st
		out = append(out, e.source(t, o))
	}
	return out
}

// TestFleetOneTokenRequest: three instances × 1000 concurrent callers cost one token request at the
// token endpoint, and so does the refresh when the token is due: the first instance under the fleet's
// lock requests and stores it, the others adopt it.
func TestFleetOneTokenRequest(t *testing.T) {
	e := newEnv(t)
	srcs := e.fleet(t, 3, ClientCredentials)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	burst := func() string {
		var wg sync.WaitGroup
		start := make(chan struct{})
		tokens := make([]string, 3000)
		errs := make([]error, len(tokens))
		for i := range tokens {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				tokens[i], errs[i] = srcs[i%3].Token(ctx)
			}()
		}
		close(start)
		wg.Wait()
		for i := range tokens {
			if errs[i] != nil || tokens[i] != tokens[0] {
				t.Fatalf("caller %d (instance %d): %v, same token %v", i, i%3, errs[i], tokens[i] == tokens[0])
			}
		}
		return tokens[0]
	}
	burst()
	if n := len(e.proxy.tokenRequests()); n != 1 {
		t.Fatalf("3 instances × 1000 callers caused %d token requests, want 1", n)
	}
	e.clock.Advance(55 * time.Minute) // inside the refresh margin
	burst()
	if n := len(e.proxy.tokenRequests()); n != 2 {
		t.Fatalf("the refresh of 3 instances: %d token requests in all, want 2", n)
	}
}

// TestFleetRotatedRefreshTokenWrittenOnce: with authorization_code, the instances refresh through one
// redemption of the refresh token; the rotated one is stored and used by the next refresh, whichever
// instance makes it (a second redemption of the old one would be refused by Microsoft).
func TestFleetRotatedRefreshTokenWrittenOnce(t *testing.T) {
	e := newEnv(t)
	srcs := e.fleet(t, 3, AuthorizationCode)
	ctx := context.Background()
	a, err := srcs[0].BeginAuthorize()
	if err != nil {
		t.Fatal(err)
	}
	code, err := a.ParsePastedRedirect(authorizeViaMock(t, a))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srcs[0].Exchange(ctx, code, a.Verifier); err != nil {
		t.Fatal(err)
	}
	issued := e.proxy.lastIssued()
	for round := range 2 {
		e.clock.Advance(55 * time.Minute)
		before := len(e.proxy.tokenRequests())
		var wg sync.WaitGroup
		for i := range 30 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := srcs[i%3].Token(ctx); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		reqs := e.proxy.tokenRequests()[before:]
		if len(reqs) != 1 || reqs[0].Get("grant_type") != "refresh_token" || reqs[0].Get("refresh_token") != issued {
			t.Fatalf("round %d: %d token requests; want one redeeming the latest refresh token", round, len(reqs))
		}
		issued = e.proxy.lastIssued()
		st := srcs[2].o.Store
		sealed, ok, err := st.GetSecret(ctx, RefreshTokenKey("m365"))
		if err != nil || !ok {
			t.Fatalf("stored refresh token: %v %v", ok, err)
		}
		if got := e.open(t, sealed); got != issued {
			t.Fatalf("round %d: the store holds another refresh token than the one last issued", round)
		}
	}
}

// TestFleetInvalidatedTokenNotAdoptedAgain: after the upstream refused a token (535 → Invalidate), the
// instance requests a new one rather than adopting the refused one back from the store, and the other
// instances then adopt the new one.
func TestFleetInvalidatedTokenNotAdoptedAgain(t *testing.T) {
	e := newEnv(t)
	srcs := e.fleet(t, 2, ClientCredentials)
	ctx := context.Background()
	t1, err := srcs[0].Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the mock's next JWT differs only from the next second on
	srcs[0].Invalidate(t1)
	t2, err := srcs[0].Token(ctx)
	if err != nil || t2 == t1 || len(e.proxy.tokenRequests()) != 2 {
		t.Fatalf("after Invalidate: new token %v, %d requests, %v", t2 != t1, len(e.proxy.tokenRequests()), err)
	}
	if got, err := srcs[1].Token(ctx); err != nil || got != t2 || len(e.proxy.tokenRequests()) != 2 {
		t.Fatalf("the other instance: adopted the new token %v, %d requests, %v", got == t2, len(e.proxy.tokenRequests()), err)
	}
}
