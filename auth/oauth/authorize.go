package oauth

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/mailgate/mailgate/kms"
)

// Authorization is one pending sign-in started by BeginAuthorize: the URL the operator opens, the
// state that the redirect must carry back (RFC 6749 §10.12, against CSRF), and the PKCE verifier
// (RFC 7636) that Exchange must present. The verifier is a secret until the code is redeemed, so an
// Authorization prints and logs as its URL only.
type Authorization struct {
	URL         string
	State       string
	Verifier    string
	RedirectURL string
}

// String shows the URL only.
func (a Authorization) String() string { return "oauth.Authorization{URL: " + a.URL + "}" }

// Format keeps the verifier out of every fmt verb.
func (a Authorization) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(a.String())) }

// LogValue keeps the verifier out of logs.
func (a Authorization) LogValue() slog.Value { return slog.StringValue(a.String()) }

// BeginAuthorize starts an authorization_code sign-in: a fresh state and PKCE verifier, and the
// provider's authorize URL with the S256 challenge (RFC 7636 §4.2) and the mailbox as login hint.
// Microsoft issues a refresh token for the offline_access scope (access_type is a Google parameter).
func (s *Source) BeginAuthorize() (*Authorization, error) {
	if s.ac == nil {
		return nil, fmt.Errorf("oauth: server %s uses %s: there is nothing to authorize", s.o.Server, s.o.Flow)
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	state := base64.RawURLEncoding.EncodeToString(b)
	verifier := oauth2.GenerateVerifier()
	opts := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}
	if s.o.Mailbox != "" {
		opts = append(opts, oauth2.SetAuthURLParam("login_hint", s.o.Mailbox))
	}
	return &Authorization{URL: s.ac.AuthCodeURL(state, opts...), State: state, Verifier: verifier, RedirectURL: s.o.RedirectURL}, nil
}

// maxRedirectLen bounds a pasted redirect URL.
const maxRedirectLen = 16 << 10

// ParsePastedRedirect takes the URL the browser was sent to after sign-in (copied from the address
// bar when the loopback listener cannot be reached), checks its state and returns the code. A bare
// query string ("code=...&state=...") is accepted too. Errors never contain the code.
func (a *Authorization) ParsePastedRedirect(raw string) (code string, err error) {
	q, err := redirectParams(raw)
	if err != nil {
		return "", err
	}
	return a.codeFrom(q)
}

// redirectParams extracts the authorization response parameters (RFC 6749 §4.1.2) from a redirect
// URL: its query, or its fragment for response_mode=fragment.
func redirectParams(raw string) (url.Values, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, errors.New("oauth: the pasted redirect is empty")
	}
	if len(raw) > maxRedirectLen {
		return nil, errors.New("oauth: the pasted redirect is too long")
	}
	var q url.Values
	if !strings.Contains(raw, "://") {
		// A bare query string, with or without its "?", or a URL copied without its scheme.
		if _, after, ok := strings.Cut(raw, "?"); ok {
			raw = after
		}
		v, err := url.ParseQuery(raw)
		if err != nil {
			return nil, errors.New("oauth: the pasted text is neither a URL nor a query string")
		}
		q = v
	} else {
		u, err := url.Parse(raw)
		if err != nil {
			// url.Parse quotes its input (the code) in its error: say only what is wrong.
			return nil, errors.New("oauth: the pasted redirect is not a valid URL")
		}
		q, err = url.ParseQuery(u.RawQuery)
		if err != nil {
			return nil, errors.New("oauth: the pasted redirect has a malformed query")
		}
		if !q.Has("code") && !q.Has("error") && u.Fragment != "" {
			if q, err = url.ParseQuery(u.Fragment); err != nil {
				return nil, errors.New("oauth: the pasted redirect has a malformed fragment")
			}
		}
	}
	return q, nil
}

// codeFrom checks an authorization response against the pending authorization.
func (a *Authorization) codeFrom(q url.Values) (string, error) {
	if e := q.Get("error"); e != "" {
		return "", fmt.Errorf("oauth: the provider refused the sign-in: %s: %s", oneLine(e, 100), oneLine(q.Get("error_description"), 300))
	}
	state := q.Get("state")
	if state == "" || len(q["state"]) != 1 || subtle.ConstantTimeCompare([]byte(state), []byte(a.State)) != 1 {
		return "", errors.New("oauth: the redirect's state does not match this authorization (an older or forged redirect): start again")
	}
	code := q.Get("code")
	if code == "" || len(q["code"]) != 1 {
		return "", errors.New("oauth: the redirect carries no authorization code")
	}
	return code, nil
}

func oneLine(s string, max int) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > max {
		s = s[:max] + "…"
	}
	return s
}

// ReceiveRedirect listens on the configured redirect URL's loopback host and port (RFC 8252 §7.3)
// until the browser arrives with the authorization response, answers it with a plain page, checks
// the state and returns the code. Only loopback addresses are ever bound: the listener must not be
// reachable from the network. It gives up when ctx ends.
func (s *Source) ReceiveRedirect(ctx context.Context, a *Authorization) (code string, err error) {
	u, err := url.Parse(a.RedirectURL)
	if err != nil || u.Scheme != "http" || u.Port() == "" || !isLoopbackHost(u.Hostname()) {
		return "", fmt.Errorf("oauth: server %s: the redirect URL %q is not an http loopback URL with a port "+
			"(e.g. http://localhost:8765/callback); paste the redirect instead", s.o.Server, a.RedirectURL)
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(u.Hostname(), u.Port()))
	if err != nil {
		return "", fmt.Errorf("oauth: cannot listen for the redirect on %s: %w", u.Host, err)
	}
	type outcome struct {
		code string
		err  error
	}
	done := make(chan outcome, 1)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.EscapedPath() != path {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Referrer-Policy", "no-referrer")
		code, err := a.codeFrom(r.URL.Query())
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, "mailgate: sign-in for server %s failed.\n\n%v\n\nSee the terminal running `mailgate oauth authorize`.\n", s.o.Server, err)
		} else {
			fmt.Fprintf(w, "mailgate: sign-in for server %s received. You can close this window and return to the terminal.\n", s.o.Server)
		}
		select {
		case done <- outcome{code, err}:
		default: // a second request after the first outcome changes nothing
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx) // lets the page reach the browser
	}()
	select {
	case o := <-done:
		return o.code, o.err
	case <-ctx.Done():
		return "", fmt.Errorf("oauth: no redirect received on %s: %w", u.Host, ctx.Err())
	}
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// Exchange redeems an authorization code with its PKCE verifier (RFC 7636 §4.5), stores the refresh
// token sealed, caches the access token, and describes the account for the operator. On failure
// it returns the same temporary *relay.Error shape as Token (e.g. reason oauth_code_redeemed).
func (s *Source) Exchange(ctx context.Context, code, verifier string) (TokenInfo, error) {
	if s.ac == nil {
		return TokenInfo{}, fmt.Errorf("oauth: server %s uses %s: there is no code to exchange", s.o.Server, s.o.Flow)
	}
	start := s.o.Now()
	tok, err := s.ac.Exchange(context.WithValue(ctx, oauth2.HTTPClient, s.o.HTTPClient), code, oauth2.VerifierOption(verifier))
	if err == nil && tok.RefreshToken == "" {
		err = errors.New("the token response has no refresh token (is offline_access among the scopes?)")
	}
	if err == nil {
		if perr := s.storeRefreshToken(ctx, kms.NewSecret(tok.RefreshToken)); perr != nil {
			err = &refreshTokenError{what: "storing the refresh token", err: perr}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		return TokenInfo{}, s.fail(err)
	}
	s.refresh, s.refreshStored = kms.NewSecret(tok.RefreshToken), true
	s.adopt(tok, start, true)
	info := DescribeToken(tok.AccessToken)
	if info.Expiry.IsZero() {
		info.Expiry = s.cached.expiry
	}
	s.log.Info("oauth authorization stored", "account", info.Account, "valid_until", info.Expiry.UTC().Format(time.RFC3339))
	return info, nil
}
