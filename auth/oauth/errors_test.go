package oauth

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/relay"
)

// aadError is the shape of a Microsoft identity platform error response (RFC 6749 §5.2 plus
// Microsoft's error_codes, trace and correlation ids; descriptions separate lines with CRLF).
func aadError(errCode string, aadsts int, text string) string {
	b, _ := json.Marshal(map[string]any{
		"error": errCode,
		"error_description": "AADSTS" + itoa(aadsts) + ": " + text +
			"\r\nTrace ID: 0c3c4b5e-1d2f-4a6b-9c8d-7e6f5a4b3c2d\r\nCorrelation ID: 5f4e3d2c-1b0a-4938-8776-655443322110\r\nTimestamp: 2026-11-27 05:22:55Z",
		"error_codes":    []int{aadsts},
		"timestamp":      "2026-11-27 05:22:55Z",
		"trace_id":       "0c3c4b5e-1d2f-4a6b-9c8d-7e6f5a4b3c2d",
		"correlation_id": "5f4e3d2c-1b0a-4938-8776-655443322110",
		"error_uri":      "https://login.microsoftonline.com/error?code=" + itoa(aadsts),
	})
	return string(b)
}

func TestMicrosoftTokenErrorsDeferWithRemedy(t *testing.T) {
	cases := []struct {
		name       string
		flow       Flow
		status     int
		body       string
		header     map[string]string
		reason     string
		aadsts     string
		remedyHas  string
		retryAfter time.Duration
	}{
		{"refresh token expired", AuthorizationCode, 400,
			aadError("invalid_grant", 700082, "The refresh token has expired due to inactivity. The token was issued on 2026-06-01T10:00:00.0000000Z and was inactive for 90.00:00:00."),
			nil, "oauth_refresh_token_expired", "700082", "run `mailgate oauth authorize --server m365` again", 0},
		{"sign-in frequency", AuthorizationCode, 400,
			aadError("invalid_grant", 70043, "The refresh token has expired or is invalid due to sign-in frequency checks by conditional access."),
			nil, "oauth_signin_frequency", "70043", "Conditional Access", 0},
		{"missing scope", ClientCredentials, 400,
			aadError("invalid_request", 900144, "The request body must contain the following parameter: 'scope'."),
			nil, "oauth_missing_scope", "900144", "https://outlook.office365.com/.default", 0},
		{"code redeemed", AuthorizationCode, 400,
			aadError("invalid_grant", 54005, "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token."),
			nil, "oauth_code_redeemed", "54005", "authorize --server m365", 0},
		{"consent revoked", AuthorizationCode, 400,
			aadError("invalid_grant", 65001, "The user or administrator has not consented to use the application."),
			nil, "oauth_invalid_grant", "65001", "authorize --server m365", 0},
		{"bad client secret", ClientCredentials, 401,
			aadError("invalid_client", 7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '11111111-2222-3333-4444-555555555555'."),
			nil, "oauth_invalid_client_secret", "7000215", "mailgate secret encrypt", 0},
		{"client secret expired", ClientCredentials, 401,
			aadError("invalid_client", 7000222, "The provided client secret keys for app '11111111-2222-3333-4444-555555555555' are expired."),
			nil, "oauth_client_secret_expired", "7000222", "create a new client secret for app 11111111-2222-3333-4444-555555555555", 0},
		{"unknown app", ClientCredentials, 400,
			aadError("unauthorized_client", 700016, "Application with identifier '11111111' was not found in the directory 'contoso.example'."),
			nil, "oauth_unauthorized_client", "700016", "tenant contoso.example", 0},
		{"outage", ClientCredentials, 503,
			"<html><body>Service Unavailable</body></html>", nil, "oauth_endpoint_unavailable", "", "HTTP 503", 0},
		{"throttled", ClientCredentials, 429,
			`{"error":"temporarily_unavailable","error_description":"AADSTS50196: The server terminated an operation because it encountered a client request loop."}`,
			map[string]string{"Retry-After": "120"}, "oauth_throttled", "50196", "throttling", 120 * time.Second},
		{"throttled without body", ClientCredentials, 429, "", map[string]string{"Retry-After": "30"}, "oauth_throttled", "", "throttling", 30 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := &env{clock: newFakeClock(), store: newMemStore(), sealer: localSealer(t), logs: &logBuffer{}}
			e.reg, e.metrics = newMetrics()
			fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				for k, v := range c.header {
					w.Header().Set(k, v)
				}
				if strings.HasPrefix(c.body, "{") {
					w.Header().Set("Content-Type", "application/json; charset=utf-8")
				}
				w.WriteHeader(c.status)
				_, _ = w.Write([]byte(c.body))
			}))
			defer fake.Close()
			s := e.source(t, e.options(c.flow, fake.URL))
			if c.flow == AuthorizationCode {
				sealed, _ := e.sealer.Seal(context.Background(), RefreshTokenKey("m365"), "rt-known-refresh-token")
				_ = e.store.PutSecret(context.Background(), RefreshTokenKey("m365"), sealed)
			}
			_, err := s.Token(context.Background())
			re, ok := relay.AsError(err)
			if !ok {
				t.Fatalf("not a relay error: %v", err)
			}
			if re.Code != 451 || re.Enhanced != relay.CodeTempAuth || !re.Temporary() || relay.IsPermanent(err) {
				t.Fatalf("want 451 4.7.0 temporary, got %d %s", re.Code, re.Enhanced)
			}
			if re.Reason != c.reason {
				t.Fatalf("reason %q, want %q (%v)", re.Reason, c.reason, err)
			}
			if re.RetryAfter != c.retryAfter && !(c.retryAfter == 0 && re.RetryAfter == 0) {
				t.Errorf("RetryAfter %v, want %v", re.RetryAfter, c.retryAfter)
			}
			var te *TokenError
			if te = tokenErrorOf(re); te.AADSTS != c.aadsts {
				t.Errorf("AADSTS %q, want %q", te.AADSTS, c.aadsts)
			}
			remedy := RemedyOf(err)
			if !strings.Contains(remedy, c.remedyHas) || !strings.Contains(re.Msg, remedy) {
				t.Errorf("remedy %q (msg %q) lacks %q", remedy, re.Msg, c.remedyHas)
			}
			if c.aadsts != "" && !strings.Contains(err.Error(), "Trace ID") && strings.Contains(c.body, "Trace ID") {
				t.Errorf("Microsoft's trace id dropped: %v", err)
			}
			if strings.Contains(err.Error(), "<html>") {
				t.Errorf("raw body in error: %v", err)
			}
			if n := testutil.ToFloat64(e.metrics.OAuthTokenErrors.WithLabelValues("m365", c.reason)); n != 1 {
				t.Errorf("mailgate_oauth_token_errors_total{server=m365,reason=%s} = %v", c.reason, n)
			}
			st := s.Status()
			if st.Healthy || st.Reason != c.reason || st.Remedy != remedy {
				t.Errorf("status %+v", st)
			}
			logs := e.logs.String()
			if !strings.Contains(logs, `"msg":"oauth token error"`) || !strings.Contains(logs, jsonEscaped(remedy)) {
				t.Errorf("log line without the remedy: %s", logs)
			}
			for _, secret := range []string{testClientSecret, "rt-known-refresh-token"} {
				if strings.Contains(logs, secret) || strings.Contains(err.Error(), secret) {
					t.Errorf("secret leaked")
				}
			}
		})
	}
}

// jsonEscaped is s as slog's JSON handler writes it (no HTML escaping).
func jsonEscaped(s string) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.Trim(strings.TrimSpace(b.String()), `"`)
}

// A provider that echoes what it was sent into its error text must not carry the secret into logs.
func TestEchoedSecretIsScrubbed(t *testing.T) {
	e := &env{clock: newFakeClock(), store: newMemStore(), sealer: localSealer(t), logs: &logBuffer{}}
	e.reg, e.metrics = newMetrics()
	fake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(401)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid_client",
			"error_description": "AADSTS7000215: Invalid client secret provided: " + r.PostForm.Get("client_secret")})
	}))
	defer fake.Close()
	s := e.source(t, e.options(ClientCredentials, fake.URL))
	_, err := s.Token(context.Background())
	if err == nil {
		t.Fatal("no error")
	}
	if strings.Contains(err.Error(), testClientSecret) || strings.Contains(e.logs.String(), testClientSecret) ||
		strings.Contains(s.Status().LastError, testClientSecret) {
		t.Fatalf("echoed client secret leaked: %v", err)
	}
	if !strings.Contains(err.Error(), "[redacted]") {
		t.Fatalf("echo not visibly scrubbed: %v", err)
	}
}
