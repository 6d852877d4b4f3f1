package oauth

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/kms"
	"github.com/mailgate/mailgate/relay/metrics"
	"github.com/mailgate/mailgate/relay/peertest"
)

// countingProxy sits in front of the real oauth2-mock-server and counts (and records) what reaches
// it, so tests can say "exactly one token request" about the wire, not about our own bookkeeping.
type countingProxy struct {
	*httptest.Server
	mu     sync.Mutex
	tokens []url.Values // form of every POST /token
	issued []string     // refresh_token of every token response, in order
	hits   map[string]int
}

func newCountingProxy(t *testing.T, upstream string) *countingProxy {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	p := &countingProxy{hits: map[string]int{}}
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.URL.Path != "/token" {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		var tr struct {
			RefreshToken string `json:"refresh_token"`
		}
		if json.Unmarshal(body, &tr) == nil && tr.RefreshToken != "" {
			p.mu.Lock()
			p.issued = append(p.issued, tr.RefreshToken)
			p.mu.Unlock()
		}
		return nil
	}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.hits[r.URL.Path]++
		if r.URL.Path == "/token" {
			body, _ := io.ReadAll(r.Body)
			form, _ := url.ParseQuery(string(body))
			p.tokens = append(p.tokens, form)
			r.Body = io.NopCloser(bytes.NewReader(body))
		}
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *countingProxy) lastIssued() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.issued) == 0 {
		return ""
	}
	return p.issued[len(p.issued)-1]
}

func (p *countingProxy) tokenRequests() []url.Values {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]url.Values(nil), p.tokens...)
}

// memStore stands in for relay/store's secret table.
type memStore struct {
	mu   sync.Mutex
	m    map[string]string
	puts int
	fail error
}

func newMemStore() *memStore { return &memStore{m: map[string]string{}} }

func (s *memStore) PutSecret(_ context.Context, key, sealed string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.m[key] = sealed
	s.puts++
	return nil
}

func (s *memStore) GetSecret(_ context.Context, key string) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return "", false, s.fail
	}
	v, ok := s.m[key]
	return v, ok, nil
}

func (s *memStore) get(key string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[key]
}

// fakeClock is the Source's injected clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logBuffer collects JSON log lines from concurrent goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// localSealer is a kms.Resolver with a fresh local keyring: refresh tokens are sealed for real.
func localSealer(t *testing.T) *kms.Resolver {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keyring.json")
	if _, err := kms.Keygen(path); err != nil {
		t.Fatal(err)
	}
	kr, err := kms.LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	return &kms.Resolver{Keyring: kr}
}

type env struct {
	mock    *peertest.OAuthMock
	proxy   *countingProxy
	clock   *fakeClock
	store   *memStore
	sealer  *kms.Resolver
	metrics *metrics.Metrics
	reg     *prometheus.Registry
	logs    *logBuffer
}

func newEnv(t *testing.T) *env {
	t.Helper()
	mock := peertest.OAuth2Mock(t)
	reg := prometheus.NewRegistry()
	return &env{
		mock: mock, proxy: newCountingProxy(t, mock.URL), clock: newFakeClock(), store: newMemStore(),
		sealer: localSealer(t), metrics: metrics.New(reg), reg: reg, logs: &logBuffer{},
	}
}

const testClientSecret = "cs~SUPER-secret-value-0123456789"

func (e *env) options(flow Flow, baseURL string) Options {
	return Options{
		Server: "m365", Tenant: "contoso.example", ClientID: "11111111-2222-3333-4444-555555555555",
		ClientSecret: kms.NewSecret(testClientSecret), Mailbox: "support@contoso.example", Flow: flow,
		RedirectURL: "http://127.0.0.1:1/callback",
		AuthURL:     baseURL + "/authorize", TokenURL: baseURL + "/token",
		Store: e.store, Sealer: e.sealer, Metrics: e.metrics, Logger: e.logs.logger(), Now: e.clock.Now,
	}
}

func (e *env) source(t *testing.T, o Options) *Source {
	t.Helper()
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// authorizeViaMock drives the mock's /authorize like a browser that signed in, returning the
// redirect Location the browser would be sent to.
func authorizeViaMock(t *testing.T, a *Authorization) string {
	t.Helper()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(a.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("authorize: %s", resp.Status)
	}
	return resp.Header.Get("Location")
}

func itoa(n int) string { return strconv.Itoa(n) }

func freePort(t *testing.T) int { return peertest.FreePort(t) }

func waitPort(addr string) error { return peertest.WaitPort(addr, 10*time.Second) }

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func secretOf(s string) kms.Secret { return kms.NewSecret(s) }

// restartMock starts oauth2-mock-server again on the stopped mock's port (a token endpoint back
// from an outage).
func restartMock(t *testing.T, m *peertest.OAuthMock) {
	t.Helper()
	u, _ := url.Parse(m.URL)
	bin := filepath.Join(peertest.Home(), "node", "node_modules", "oauth2-mock-server", "dist", "oauth2-mock-server.mjs")
	peertest.Start(t, "oauth2-mock-again", u.Host, nil, "node", bin, "-a", "127.0.0.1", "-p", u.Port())
}

func newMetrics() (*prometheus.Registry, *metrics.Metrics) {
	reg := prometheus.NewRegistry()
	return reg, metrics.New(reg)
}

func startMockForBench(b *testing.B) string { return peertest.OAuth2Mock(b).URL }
