package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/mailgate/mailgate/kms"
	"github.com/mailgate/mailgate/relay"
)

// Source hands out access tokens for one credential. It is safe for concurrent use and meant to be
// shared by every worker delivering through that server (see the package doc for the design).
type Source struct {
	o   Options
	log *slog.Logger
	cc  *clientcredentials.Config
	ac  *oauth2.Config

	mu     sync.Mutex
	cached *cachedToken
	flight *flight
	// refresh is the newest refresh token known in memory; refreshStored says whether the store
	// holds it too (false after a failed persist, so the memory copy wins and is persisted again).
	refresh       kms.Secret
	refreshStored bool
	lastRefresh   time.Time
	rejected      string // the access token the upstream refused last (Invalidate)
	lastErr       *relay.Error
	lastErrAt     time.Time
	pausedUntil   time.Time
}

type cachedToken struct {
	access    string
	refreshAt time.Time // replace from here on
	expiry    time.Time // unusable from here on
}

// flight is one token request; its waiters read token/err after done is closed.
type flight struct {
	done  chan struct{}
	token string
	err   error
}

// tokenRequestTimeout bounds one token request (the Source's own context, not a caller's).
const tokenRequestTimeout = 30 * time.Second

// minUsable is the shortest remaining lifetime for which a cached token is still handed out while
// its replacement cannot be obtained.
const minUsable = time.Minute

// New validates the options and returns the credential's Source. It makes no request: the first
// Token call (or Exchange) does.
func New(o Options) (*Source, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.Provider == "" {
		o.Provider = ProviderMicrosoft
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: tokenRequestTimeout}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ClientCertificate != nil {
		c := *o.HTTPClient
		base := c.Transport
		if base == nil {
			base = http.DefaultTransport
		}
		c.Transport = &assertingTransport{base: base, tokenURL: o.endpoint().TokenURL, clientID: o.ClientID, cert: o.ClientCertificate, now: o.Now}
		o.HTTPClient = &c
		o.ClientSecret = kms.Secret{}
	}
	if o.RetryFailedAfter <= 0 {
		o.RetryFailedAfter = 10 * time.Second
	}
	s := &Source{o: o, log: o.Logger.With("server", o.Server)}
	if exp, _ := s.CredentialExpiry(); !exp.IsZero() && o.Metrics != nil {
		o.Metrics.OAuthCredentialExpiry.WithLabelValues(o.Server).Set(float64(exp.Unix()))
	}
	if o.Flow == ClientCredentials {
		s.cc = o.clientCredentials()
	} else {
		s.ac = o.authorizationCode()
	}
	return s, nil
}

// CredentialExpiry is when the app's credential stops working — the client certificate's NotAfter or
// the configured client secret expiry, whichever comes first — and which one it is; zero when unknown.
func (s *Source) CredentialExpiry() (time.Time, string) {
	if c := s.o.ClientCertificate; c != nil && (s.o.SecretExpires.IsZero() || c.Cert.NotAfter.Before(s.o.SecretExpires)) {
		return c.Cert.NotAfter, "client certificate " + c.Thumbprint()
	}
	if !s.o.SecretExpires.IsZero() {
		return s.o.SecretExpires, "client secret"
	}
	return time.Time{}, ""
}

// Expiry thresholds for the credential: a warning from 30 days before, a failure from 7 days before.
const (
	ExpiryWarning = 30 * 24 * time.Hour
	ExpiryFailure = 7 * 24 * time.Hour
)

// ExpiryProblem says, at now, whether the credential expires soon: warn within ExpiryWarning, fail
// within ExpiryFailure (or after it expired), each with what to do. Both empty: fine or unknown.
func (s *Source) ExpiryProblem(now time.Time) (warn, fail string) {
	exp, what := s.CredentialExpiry()
	if exp.IsZero() {
		return "", ""
	}
	left := exp.Sub(now)
	remedy := "upload a new one to the app registration (Certificates & secrets) and update server " + s.o.Server + "'s oauth settings"
	switch {
	case left <= 0:
		return "", fmt.Sprintf("the %s of server %s expired on %s: %s", what, s.o.Server, exp.UTC().Format("2006-01-02"), remedy)
	case left <= ExpiryFailure:
		return "", fmt.Sprintf("the %s of server %s expires on %s (in %d days): %s", what, s.o.Server, exp.UTC().Format("2006-01-02"), int(left.Hours()/24), remedy)
	case left <= ExpiryWarning:
		return fmt.Sprintf("the %s of server %s expires on %s (in %d days): %s", what, s.o.Server, exp.UTC().Format("2006-01-02"), int(left.Hours()/24), remedy), ""
	}
	return "", ""
}

// Server is the name of the credential's server.
func (s *Source) Server() string { return s.o.Server }

// Mailbox is the mailbox the token authenticates as (the XOAUTH2 user).
func (s *Source) Mailbox() string { return s.o.Mailbox }

// Token returns a valid access token, from the cache when it is not within RefreshMargin of its
// expiry, otherwise from the one token request in flight (started if none is). Errors are temporary
// *relay.Error values (451 4.7.0) whose Reason and RemedyOf say what went wrong and what to do.
func (s *Source) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	now := s.o.Now()
	if c := s.cached; c != nil && now.Before(c.refreshAt) {
		tok := c.access
		s.mu.Unlock()
		return tok, nil
	}
	f := s.flight
	if f == nil {
		if now.Before(s.pausedUntil) {
			defer s.mu.Unlock()
			if c := s.cached; c != nil && now.Add(minUsable).Before(c.expiry) {
				return c.access, nil
			}
			err := *s.lastErr
			err.RetryAfter = s.pausedUntil.Sub(now)
			return "", &err
		}
		f = &flight{done: make(chan struct{})}
		s.flight = f
		go s.refreshToken(f)
	}
	s.mu.Unlock()
	select {
	case <-f.done:
		return f.token, f.err
	case <-ctx.Done():
		return "", relay.Wrap(ctx.Err(), 451, relay.CodeTempAuth, "oauth_timeout",
			"gave up waiting for the OAuth token of server "+s.o.Server)
	}
}

// Invalidate drops the cached token if it is still token, typically after the upstream answered
// 535 to it, so the next Token call fetches a new one. A token already replaced is left alone.
func (s *Source) Invalidate(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cached != nil && s.cached.access == token {
		s.cached = nil
		s.rejected = token // not to be adopted again from the fleet's store
		s.log.Info("oauth token invalidated")
	}
}

// refreshToken runs one token request for flight f and publishes its outcome.
func (s *Source) refreshToken(f *flight) {
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), oauth2.HTTPClient, s.o.HTTPClient), tokenRequestTimeout)
	defer cancel()
	start := s.o.Now()
	var tok *oauth2.Token
	var err error
	requested := true
	if s.o.Fleet != nil {
		// One request for the fleet: under the lock, a token another instance stored wins.
		var unlock func()
		if unlock, err = s.o.Fleet.LockRefresh(ctx, "oauth/"+s.o.Server); err == nil {
			defer unlock() // after the new token is stored (below), so a waiter finds it
			if shared, issued, ok := s.sharedToken(ctx); ok {
				tok, start, requested = shared, issued, false
			}
		} else {
			err = relay.Wrap(err, 451, relay.CodeTempAuth, "oauth_fleet", "the fleet's token lock for server "+s.o.Server+" is unavailable")
		}
	}
	if err == nil && requested {
		if s.cc != nil {
			tok, err = s.cc.Token(ctx)
		} else {
			tok, err = s.refreshWithRefreshToken(ctx)
		}
		if err == nil && tok.AccessToken == "" {
			err = errors.New("token response without an access token")
		}
		if err == nil && s.o.Fleet != nil {
			s.shareToken(ctx, tok, start)
		}
	}

	s.mu.Lock()
	if err != nil {
		rerr := s.fail(err)
		if c := s.cached; c != nil && s.o.Now().Add(minUsable).Before(c.expiry) {
			f.token = c.access // keep delivering with the old token while it lasts
		} else {
			s.cached = nil
			f.err = rerr
		}
	} else {
		s.adopt(tok, start, requested)
		f.token = tok.AccessToken
	}
	s.flight = nil
	s.mu.Unlock()
	close(f.done)
}

// adopt caches a fresh token (requested: by this process, else adopted from the fleet); s.mu is held.
func (s *Source) adopt(tok *oauth2.Token, start time.Time, requested bool) {
	// expires_in (RFC 6749 §5.1) is in whole seconds. clientcredentials drops the field and keeps
	// only Expiry (computed on the real clock when the response was parsed): round it back.
	lifetime := time.Duration(tok.ExpiresIn) * time.Second
	if lifetime <= 0 && !tok.Expiry.IsZero() {
		lifetime = time.Until(tok.Expiry).Round(time.Second)
	}
	if lifetime <= 0 {
		lifetime = time.Hour // no expiry given: Microsoft always sends one; assume its usual hour
	}
	margin := RefreshMargin
	if lifetime <= 2*margin {
		margin = lifetime / 2 // a short-lived token must not be "due" the moment it arrives
	}
	// Lifetime counts from when the server answered; counting from the request start errs early.
	s.cached = &cachedToken{access: tok.AccessToken, refreshAt: start.Add(lifetime - margin), expiry: start.Add(lifetime)}
	s.lastRefresh = s.o.Now()
	s.lastErr, s.pausedUntil = nil, time.Time{}
	if !requested {
		s.log.Info("oauth token adopted from another instance", "valid_until", s.cached.expiry.UTC().Format(time.RFC3339))
		return
	}
	if s.o.Metrics != nil {
		s.o.Metrics.OAuthTokenRefreshes.WithLabelValues(s.o.Server).Inc()
	}
	s.log.Info("oauth token obtained", "flow", string(s.o.Flow), "valid_until", s.cached.expiry.UTC().Format(time.RFC3339))
}

// fail records a token failure, counts and logs it, and returns the relay error; s.mu is held.
func (s *Source) fail(err error) *relay.Error {
	rerr := s.classify(err)
	now := s.o.Now()
	s.lastErr, s.lastErrAt = rerr, now
	s.pausedUntil = now.Add(s.o.RetryFailedAfter)
	if rerr.RetryAfter > s.o.RetryFailedAfter {
		s.pausedUntil = now.Add(rerr.RetryAfter)
	}
	if s.o.Metrics != nil {
		s.o.Metrics.OAuthTokenErrors.WithLabelValues(s.o.Server, rerr.Reason).Inc()
	}
	te := tokenErrorOf(rerr)
	s.log.Warn("oauth token error", "reason", rerr.Reason, "aadsts", te.AADSTS, "err", te.Detail, "remedy", te.Remedy)
	return rerr
}

// sharedAccessToken is what the fleet stores (sealed) under AccessTokenKey.
type sharedAccessToken struct {
	Access   string `json:"access_token"`
	IssuedMS int64  `json:"issued_ms"` // when the request that obtained it started
	Lifetime int64  `json:"expires_in"`
}

// sharedToken returns the access token another instance stored, when it is still before its refresh
// point. Any failure (none stored, unreadable store, undecryptable) means "request one".
func (s *Source) sharedToken(ctx context.Context) (*oauth2.Token, time.Time, bool) {
	key := AccessTokenKey(s.o.Server)
	sealed, ok, err := s.o.Store.GetSecret(ctx, key)
	if err != nil || !ok {
		return nil, time.Time{}, false
	}
	if name, err := kms.SealedName(sealed); err != nil || name != key {
		return nil, time.Time{}, false
	}
	plain, err := s.o.Sealer.Open(ctx, sealed)
	if err != nil {
		s.log.Warn("oauth: the fleet's stored access token cannot be opened; requesting a new one", "err", err)
		return nil, time.Time{}, false
	}
	var st sharedAccessToken
	if err := json.Unmarshal([]byte(plain.Reveal()), &st); err != nil || st.Access == "" || st.Lifetime <= 0 {
		return nil, time.Time{}, false
	}
	s.mu.Lock()
	rejected := st.Access == s.rejected
	s.mu.Unlock()
	if rejected {
		return nil, time.Time{}, false
	}
	issued := time.UnixMilli(st.IssuedMS)
	tok := &oauth2.Token{AccessToken: st.Access, ExpiresIn: st.Lifetime}
	margin := RefreshMargin
	if life := time.Duration(st.Lifetime) * time.Second; life <= 2*margin {
		margin = life / 2
	}
	if !s.o.Now().Before(issued.Add(time.Duration(st.Lifetime)*time.Second - margin)) {
		return nil, time.Time{}, false
	}
	return tok, issued, true
}

// shareToken stores a token this instance obtained for the rest of the fleet. A failure costs the
// others one request each, nothing more: it is logged, not returned.
func (s *Source) shareToken(ctx context.Context, tok *oauth2.Token, start time.Time) {
	lifetime := tok.ExpiresIn
	if lifetime <= 0 && !tok.Expiry.IsZero() {
		lifetime = int64(time.Until(tok.Expiry).Round(time.Second) / time.Second)
	}
	if lifetime <= 0 {
		return
	}
	b, err := json.Marshal(sharedAccessToken{Access: tok.AccessToken, IssuedMS: start.UnixMilli(), Lifetime: lifetime})
	if err == nil {
		var sealed string
		key := AccessTokenKey(s.o.Server)
		if sealed, err = s.o.Sealer.Seal(ctx, key, string(b)); err == nil {
			err = s.o.Store.PutSecret(ctx, key, sealed)
		}
	}
	if err != nil {
		s.log.Warn("oauth: could not share the access token with the fleet", "err", err)
	}
}

// refreshWithRefreshToken redeems the stored refresh token and persists a rotated one.
func (s *Source) refreshWithRefreshToken(ctx context.Context) (*oauth2.Token, error) {
	rt, err := s.loadRefreshToken(ctx)
	if err != nil {
		return nil, err
	}
	// A token with only a refresh token is "expired": TokenSource redeems it at once, adopts a
	// rotated refresh token and keeps the old one when the server sends none.
	tok, err := s.ac.TokenSource(ctx, &oauth2.Token{RefreshToken: rt.Reveal()}).Token()
	if err != nil {
		return nil, err
	}
	if tok.RefreshToken != "" && tok.RefreshToken != rt.Reveal() {
		s.keepRefreshToken(ctx, kms.NewSecret(tok.RefreshToken))
	}
	return tok, nil
}

// loadRefreshToken prefers the store (another instance may have rotated the token) unless memory
// holds a newer one that could not be persisted.
func (s *Source) loadRefreshToken(ctx context.Context) (kms.Secret, error) {
	s.mu.Lock()
	mem, stored := s.refresh, s.refreshStored
	s.mu.Unlock()
	if !mem.IsZero() && !stored {
		return mem, nil
	}
	key := RefreshTokenKey(s.o.Server)
	sealed, ok, err := s.o.Store.GetSecret(ctx, key)
	switch {
	case err != nil && !mem.IsZero():
		s.log.Warn("oauth refresh token: store unreadable, using the copy in memory", "err", err.Error())
		return mem, nil
	case err != nil:
		return kms.Secret{}, &refreshTokenError{what: "reading the stored refresh token", err: err}
	case !ok && !mem.IsZero():
		return mem, nil
	case !ok:
		return kms.Secret{}, errNotAuthorized
	}
	if name, err := kms.SealedName(sealed); err != nil || name != key {
		return kms.Secret{}, &refreshTokenError{what: "the stored refresh token", err: errors.New("is not sealed for this server (copied from another row?)")}
	}
	rt, err := s.o.Sealer.Open(ctx, sealed)
	if err != nil {
		return kms.Secret{}, &refreshTokenError{what: "decrypting the stored refresh token", err: err}
	}
	s.mu.Lock()
	s.refresh, s.refreshStored = rt, true
	s.mu.Unlock()
	return rt, nil
}

// keepRefreshToken holds a new refresh token in memory and persists it sealed. A failed persist is
// logged and retried at the next refresh (the memory copy is then preferred).
func (s *Source) keepRefreshToken(ctx context.Context, rt kms.Secret) {
	err := s.storeRefreshToken(ctx, rt)
	s.mu.Lock()
	s.refresh, s.refreshStored = rt, err == nil
	s.mu.Unlock()
	if err != nil {
		s.log.Error("oauth refresh token rotated but not persisted; kept in memory and retried at the next refresh", "err", err.Error())
		return
	}
	s.log.Info("oauth refresh token rotated and persisted")
}

func (s *Source) storeRefreshToken(ctx context.Context, rt kms.Secret) error {
	key := RefreshTokenKey(s.o.Server)
	sealed, err := s.o.Sealer.Seal(ctx, key, rt.Reveal())
	if err != nil {
		return err
	}
	return s.o.Store.PutSecret(ctx, key, sealed)
}

// Status is a credential's state for `mailgate oauth status` and /readyz. It holds no token.
type Status struct {
	Server  string `json:"server"`
	Flow    Flow   `json:"flow"`
	Mailbox string `json:"mailbox,omitempty"`
	// ValidUntil is the cached access token's expiry (zero: none cached).
	ValidUntil  time.Time `json:"valid_until,omitzero"`
	LastRefresh time.Time `json:"last_refresh,omitzero"`
	// LastError, its Reason and Remedy describe the latest failure since the last success.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Reason      string    `json:"reason,omitempty"`
	Remedy      string    `json:"remedy,omitempty"`
	// Healthy: mail can be sent now (a valid token is cached), or nothing has failed yet.
	Healthy bool `json:"healthy"`
}

// Status reports the credential's state without making a request.
func (s *Source) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Server: s.o.Server, Flow: s.o.Flow, Mailbox: s.o.Mailbox, LastRefresh: s.lastRefresh}
	valid := false
	if s.cached != nil {
		st.ValidUntil = s.cached.expiry
		valid = s.o.Now().Before(s.cached.expiry)
	}
	if s.lastErr != nil {
		te := tokenErrorOf(s.lastErr)
		st.LastError, st.LastErrorAt, st.Reason, st.Remedy = s.lastErr.Msg, s.lastErrAt, s.lastErr.Reason, te.Remedy
	}
	st.Healthy = valid || s.lastErr == nil
	return st
}

// Check obtains a token (from the cache or a request) and returns the resulting Status: what
// `mailgate oauth status` prints and what /readyz can call at start-up.
func (s *Source) Check(ctx context.Context) Status {
	_, _ = s.Token(ctx)
	return s.Status()
}

// String names the credential; a Source never prints its tokens or secrets.
func (s *Source) String() string {
	return "oauth.Source{server: " + s.o.Server + ", flow: " + string(s.o.Flow) + "}"
}

// Format keeps tokens out of every fmt verb (%+v would otherwise walk the struct).
func (s *Source) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }
