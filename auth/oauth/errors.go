package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/mailgate/mailgate/relay"
)

// TokenError is the cause inside the temporary *relay.Error a token failure returns: the reason,
// Microsoft's AADSTS code when there is one, a description safe to log, and the operator's remedy.
type TokenError struct {
	Server string
	Reason string // same as the relay.Error's Reason
	AADSTS string // e.g. "700082"; empty when the provider gave none
	Detail string // what failed, safe to log (no token, secret or code)
	Remedy string // what the operator should do
	Err    error  // the underlying error, for errors.As (its own text is not rendered)
}

// Error renders the safe description only.
func (e *TokenError) Error() string { return "oauth " + e.Server + ": " + e.Detail }

// Unwrap gives errors.As access to the underlying error (e.g. *oauth2.RetrieveError).
func (e *TokenError) Unwrap() error { return e.Err }

// RemedyOf returns the operator's remedy carried by a token error, or "".
func RemedyOf(err error) string {
	var te *TokenError
	if errors.As(err, &te) {
		return te.Remedy
	}
	return ""
}

func tokenErrorOf(err *relay.Error) *TokenError {
	var te *TokenError
	if errors.As(err, &te) {
		return te
	}
	return &TokenError{Reason: err.Reason, Detail: err.Msg}
}

// errNotAuthorized: authorization_code without a refresh token yet.
var errNotAuthorized = errors.New("no refresh token stored")

// refreshTokenError: the stored refresh token could not be read or opened (store or KMS trouble).
type refreshTokenError struct {
	what string
	err  error
}

func (e *refreshTokenError) Error() string { return e.what + ": " + e.err.Error() }
func (e *refreshTokenError) Unwrap() error { return e.err }

var aadstsPattern = regexp.MustCompile(`AADSTS(\d+)`)

// classify (s.mu held) maps a token failure to a temporary relay error with reason and remedy. Every failure is
// temporary: a broken credential is the relay operator's problem to fix, and the customer's mail
// waits in the queue meanwhile instead of bouncing.
func (s *Source) classify(err error) *relay.Error {
	te := &TokenError{Server: s.o.Server, Err: err}
	authorize := fmt.Sprintf("run `mailgate oauth authorize --server %s` again", s.o.Server)
	newSecret := fmt.Sprintf("create a new client secret for app %s in Entra ID (App registrations > Certificates & secrets), "+
		"encrypt its Value with `mailgate secret encrypt`, put the reference in server %s's client_secret and reload",
		s.o.ClientID, s.o.Server)
	var retrieve *oauth2.RetrieveError
	var rte *refreshTokenError
	var retryAfter time.Duration
	switch {
	case errors.Is(err, errNotAuthorized):
		te.Reason, te.Detail = "oauth_not_authorized", "no refresh token stored for this server"
		te.Remedy = fmt.Sprintf("run `mailgate oauth authorize --server %s` to sign in as %s", s.o.Server, s.o.Mailbox)
	case errors.As(err, &rte):
		te.Reason, te.Detail = "oauth_refresh_token_unavailable", s.scrub(rte.Error())
		te.Remedy = "check the store and the KMS key that sealed the refresh token (see the error); if the key is gone, " + authorize
	case errors.As(err, &retrieve):
		te.AADSTS = aadstsCode(retrieve)
		status := 0
		if retrieve.Response != nil {
			status = retrieve.Response.StatusCode
			retryAfter = parseRetryAfter(retrieve.Response.Header.Get("Retry-After"))
		}
		te.Detail = s.describeRetrieveError(retrieve, status, te.AADSTS)
		switch code := retrieve.ErrorCode; {
		case code == "invalid_grant" && te.AADSTS == "700082":
			te.Reason = "oauth_refresh_token_expired"
			te.Remedy = "the refresh token expired (unused too long, or revoked): " + authorize
		case code == "invalid_grant" && te.AADSTS == "70043":
			te.Reason = "oauth_signin_frequency"
			te.Remedy = "a Conditional Access sign-in frequency policy ended the session: exclude " + s.o.Mailbox +
				" from that policy for this app, or " + authorize + " whenever it requires"
		case te.AADSTS == "900144":
			te.Reason = "oauth_missing_scope"
			te.Remedy = "the token request lacked a required parameter (scope): check server " + s.o.Server +
				"'s scopes (default " + strings.Join(s.o.scopes(), " ") + ")"
		case te.AADSTS == "54005":
			te.Reason = "oauth_code_redeemed"
			te.Remedy = "the authorization code was already used: " + authorize + " and use the redirect only once"
		case code == "invalid_grant":
			te.Reason = "oauth_invalid_grant"
			te.Remedy = "the grant is no longer valid (consent revoked, password reset or account disabled): " + authorize
		case code == "invalid_client" && te.AADSTS == "7000222":
			te.Reason = "oauth_client_secret_expired"
			te.Remedy = "the client secret expired: " + newSecret
		case code == "invalid_client" && (te.AADSTS == "700027" || te.AADSTS == "700021"):
			te.Reason = "oauth_client_assertion_refused"
			te.Remedy = "Entra ID did not accept mailgate's client assertion: upload the certificate " + s.certName() +
				" to app " + s.o.ClientID + " (Certificates & secrets), and check that client_key is that certificate's key"
		case code == "invalid_client" && te.AADSTS == "700024":
			te.Reason = "oauth_client_assertion_time"
			te.Remedy = "the client assertion's time range was refused: synchronise this host's clock (NTP)"
		case code == "invalid_client" && te.AADSTS == "7000215":
			te.Reason = "oauth_invalid_client_secret"
			te.Remedy = "the client secret is wrong (often the secret's ID was copied instead of its Value): " + newSecret
		case code == "invalid_client":
			te.Reason = "oauth_invalid_client"
			te.Remedy = "the app was not recognised: check server " + s.o.Server + "'s tenant, client_id and client_secret"
		case code == "unauthorized_client":
			te.Reason = "oauth_unauthorized_client"
			te.Remedy = "the app may not use this grant: check its registration in tenant " + s.o.Tenant +
				" (API permissions and admin consent for SMTP)"
		case code == "invalid_scope":
			te.Reason = "oauth_invalid_scope"
			te.Remedy = "the scopes were refused: check server " + s.o.Server + "'s scopes and the app's API permissions"
		case status == http.StatusTooManyRequests || code == "slow_down":
			te.Reason = "oauth_throttled"
			te.Remedy = "the token endpoint is throttling mailgate: mail is deferred and retried; nothing to do unless it persists"
		case status >= 500 || code == "temporarily_unavailable" || code == "server_error": // RFC 6749 §4.1.2.1
			te.Reason = "oauth_endpoint_unavailable"
			te.Remedy = "the token endpoint is failing (HTTP " + strconv.Itoa(status) + "): mail is deferred and retried; " +
				"check the provider's service status if it persists"
		default:
			te.Reason = "oauth_token_error"
			te.Remedy = "check server " + s.o.Server + "'s OAuth settings against the app registration"
		}
	case errors.Is(err, context.DeadlineExceeded) || isNetworkError(err):
		te.Reason = "oauth_endpoint_unreachable"
		te.Detail = s.scrub(err.Error())
		te.Remedy = "cannot reach the token endpoint " + s.tokenHost() + ": check DNS and outbound HTTPS (firewall, proxy); " +
			"mail is deferred and retried"
	default:
		te.Reason = "oauth_token_error"
		te.Detail = s.scrub(err.Error())
		te.Remedy = "check server " + s.o.Server + "'s OAuth settings"
	}
	return &relay.Error{
		Code: 451, Enhanced: relay.CodeTempAuth, Reason: te.Reason, RetryAfter: retryAfter, Err: te, Remedy: te.Remedy,
		Msg: fmt.Sprintf("OAuth token for server %s unavailable (%s); %s", s.o.Server, te.Reason, te.Remedy),
	}
}

// certName names the client certificate for a remedy (its SHA-256 thumbprint), "" without one.
func (s *Source) certName() string {
	if s.o.ClientCertificate == nil {
		return "(none configured: set client_certificate and client_key)"
	}
	return "with x5t#S256 thumbprint " + s.o.ClientCertificate.Thumbprint()
}

func (s *Source) tokenHost() string {
	u, err := url.Parse(s.o.endpoint().TokenURL)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Host
}

// describeRetrieveError renders an RFC 6749 §5.2 error response without the raw body (a proxy's
// error page could echo anything): the error code, and the first line of the description, which
// for Microsoft holds the AADSTS code and text; Trace and Correlation ids follow on later lines.
func (s *Source) describeRetrieveError(e *oauth2.RetrieveError, status int, aadsts string) string {
	parts := []string{}
	if e.ErrorCode != "" {
		parts = append(parts, e.ErrorCode)
	} else if status != 0 {
		parts = append(parts, "HTTP "+strconv.Itoa(status))
	}
	desc := e.ErrorDescription
	if desc == "" && aadsts != "" {
		desc = "AADSTS" + aadsts
	}
	if desc != "" {
		first, rest, _ := strings.Cut(desc, "\n")
		first = strings.TrimSpace(first)
		if len(first) > 300 {
			first = first[:300] + "…"
		}
		if i := strings.Index(rest, "Trace ID:"); i >= 0 {
			trace, _, _ := strings.Cut(rest[i:], "\n")
			first += " (" + strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(trace), "\r")) + ")"
		}
		parts = append(parts, first)
	}
	return s.scrub(strings.Join(parts, ": "))
}

// aadstsCode finds Microsoft's AADSTS number in the description or the error_codes array.
func aadstsCode(e *oauth2.RetrieveError) string {
	if m := aadstsPattern.FindStringSubmatch(e.ErrorDescription); m != nil {
		return m[1]
	}
	var body struct {
		ErrorCodes []int64 `json:"error_codes"`
	}
	if json.Unmarshal(e.Body, &body) == nil && len(body.ErrorCodes) > 0 {
		return strconv.FormatInt(body.ErrorCodes[0], 10)
	}
	return ""
}

func isNetworkError(err error) bool {
	var netErr net.Error
	var urlErr *url.Error
	return errors.As(err, &netErr) || errors.As(err, &urlErr)
}

func parseRetryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t)
	}
	return 0
}

// scrub removes any known secret value from text bound for a log line or an error: defence in
// depth for descriptions that come from outside. s.mu is held (classify runs under it).
func (s *Source) scrub(text string) string {
	secrets := []string{s.o.ClientSecret.Reveal()}
	if !s.refresh.IsZero() {
		secrets = append(secrets, s.refresh.Reveal())
	}
	if s.cached != nil {
		secrets = append(secrets, s.cached.access)
	}
	for _, v := range secrets {
		if len(v) >= 4 {
			text = strings.ReplaceAll(text, v, "[redacted]")
		}
	}
	return text
}
