package oauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/oauth2/microsoft"

	"github.com/mailgate/mailgate/kms"
	"github.com/mailgate/mailgate/relay/metrics"
)

// Flow is the OAuth 2.0 grant a credential uses (RFC 6749 §4.1 and §4.4).
type Flow string

const (
	// ClientCredentials is the app-only grant (Exchange Online "SMTP.SendAsApp" application permission).
	ClientCredentials Flow = "client_credentials"
	// AuthorizationCode is the delegated grant with a refresh token (SMTP.Send on behalf of a mailbox).
	AuthorizationCode Flow = "authorization_code"
)

// ProviderMicrosoft is the only provider so far: Microsoft Entra ID (Azure AD) v2.0 endpoints.
const ProviderMicrosoft = "microsoft"

// API is what a credential's tokens are for: it decides their audience (the default scopes). A token
// is only accepted by the API it was issued for: Exchange Online answers 535 5.7.3 to a Graph token
// on SMTP, and Graph answers 401 to an Outlook one.
type API string

const (
	// APISMTP is Exchange Online SMTP AUTH with XOAUTH2 (the default).
	APISMTP API = "smtp"
	// APIGraph is Microsoft Graph (sendMail).
	APIGraph API = "graph"
)

// Default scopes per API and flow: Microsoft's "Authenticate an IMAP, POP or SMTP connection using
// OAuth" for SMTP (application permission SMTP.SendAsApp, delegated SMTP.Send), and Graph's Mail.Send
// (application or delegated) for sendMail.
var defaultScopes = map[API]map[Flow][]string{
	APISMTP: {
		ClientCredentials: {"https://outlook.office365.com/.default"},
		AuthorizationCode: {"https://outlook.office.com/SMTP.Send", "offline_access"},
	},
	APIGraph: {
		ClientCredentials: {"https://graph.microsoft.com/.default"},
		AuthorizationCode: {"https://graph.microsoft.com/Mail.Send", "offline_access"},
	},
}

// RefreshMargin is how long before expiry a cached token is replaced: at least 10 minutes, so a
// connection authenticated just before the refresh still has a valid token for its whole session.
const RefreshMargin = 10 * time.Minute

// SecretStore keeps sealed secrets by key; relay/store provides it (SQLite or PostgreSQL), shared
// by every instance.
type SecretStore interface {
	PutSecret(ctx context.Context, key, sealed string) error
	GetSecret(ctx context.Context, key string) (sealed string, ok bool, err error)
}

// Fleet makes one credential's token requests single-flight across the instances that share a store:
// relay/store implements it (a PostgreSQL advisory lock; a process-local lock for SQLite, which one
// instance owns). nil: this process alone.
type Fleet interface {
	// LockRefresh waits until this process holds the fleet-wide lock named key, or ctx ends; unlock
	// releases it. A crashed holder's lock is released with its database session.
	LockRefresh(ctx context.Context, key string) (unlock func(), err error)
}

// Sealer encrypts values for the store and decrypts them back; *kms.Resolver provides it.
type Sealer interface {
	Seal(ctx context.Context, name, plaintext string) (ref string, err error)
	Open(ctx context.Context, ref string) (kms.Secret, error)
}

// Options describe one credential: a custom SMTP server with "auth: microsoft-oauth".
type Options struct {
	Server   string // the custom SMTP server's name: metrics label, log field, store key
	Provider string // "microsoft" (the default)
	Tenant   string // Entra tenant id or domain; "organizations"/"common" allowed for authorization_code
	ClientID string
	// ClientSecret is the app's secret (resolved from a secret reference at config load). Required for
	// client_credentials unless ClientCertificate is set; optional for authorization_code (public
	// clients send none).
	ClientSecret kms.Secret
	// ClientCertificate, when set, authenticates the app with a client assertion signed by the
	// certificate's key (RFC 7523) in every flow, instead of ClientSecret.
	ClientCertificate *ClientCertificate
	// SecretExpires is when the configured client secret expires (zero: unknown). With the
	// certificate's NotAfter it makes CredentialExpiry, which /readyz and a gauge report ahead of time.
	SecretExpires time.Time
	Mailbox       string // the sending mailbox (the XOAUTH2 user); also the sign-in hint
	Flow          Flow
	// API is what the tokens are for: APISMTP (default) or APIGraph. It picks the default Scopes.
	API API
	// Scopes default per API and flow (see the package doc); set only for unusual tenants.
	Scopes []string
	// RedirectURL is where the provider sends the browser after sign-in (authorization_code):
	// a loopback URL such as http://localhost:8765/callback, registered on the app as a
	// "Mobile and desktop applications" redirect URI.
	RedirectURL string
	// AuthURL and TokenURL override the provider's endpoints (national clouds, tests). Empty =
	// microsoft.AzureADEndpoint(Tenant).
	AuthURL, TokenURL string

	Store  SecretStore // required for authorization_code and with Fleet
	Sealer Sealer      // required for authorization_code and with Fleet
	// Fleet, when set, makes token requests single-flight across instances: under its lock an
	// instance first adopts an access token another instance stored (sealed, AccessTokenKey) and
	// requests one only when none is fresh, storing it — and a rotated refresh token — for the others.
	Fleet Fleet

	Metrics *metrics.Metrics // nil = not counted
	Logger  *slog.Logger     // nil = slog.Default()
	// HTTPClient makes the token requests; nil = a client with a 30 s timeout.
	HTTPClient *http.Client
	// RetryFailedAfter pauses token requests after a failure (callers get the same error, or the
	// still-valid cached token, meanwhile). Zero = 10 s.
	RetryFailedAfter time.Duration
	// Now is the clock; nil = time.Now. Expiry is computed on it from expires_in.
	Now func() time.Time
}

// RefreshTokenKey is the store key (and the sealed name) of a server's refresh token.
func RefreshTokenKey(server string) string { return "oauth/" + server + "/refresh_token" }

// AccessTokenKey is the store key (and the sealed name) of a server's current access token, shared by
// the instances of a fleet.
func AccessTokenKey(server string) string { return "oauth/" + server + "/access_token" }

func (o *Options) validate() error {
	var errs []error
	if o.Server == "" {
		errs = append(errs, errors.New("server name is empty"))
	}
	if o.Provider != "" && o.Provider != ProviderMicrosoft {
		errs = append(errs, fmt.Errorf("provider %q is not supported (want %q)", o.Provider, ProviderMicrosoft))
	}
	if o.ClientID == "" {
		errs = append(errs, errors.New("client id is empty"))
	}
	if o.Tenant == "" && (o.AuthURL == "" || o.TokenURL == "") {
		errs = append(errs, errors.New("tenant id is empty (and the endpoints are not overridden)"))
	}
	switch o.API {
	case "", APISMTP, APIGraph:
	default:
		errs = append(errs, fmt.Errorf("api %q: want %s or %s", o.API, APISMTP, APIGraph))
	}
	switch o.Flow {
	case ClientCredentials:
		if o.ClientSecret.IsZero() && o.ClientCertificate == nil {
			errs = append(errs, errors.New("client_credentials needs a client secret or a client certificate"))
		}
	case AuthorizationCode:
		if o.RedirectURL == "" {
			errs = append(errs, errors.New("authorization_code needs a redirect URL"))
		}
		if o.Store == nil || o.Sealer == nil {
			errs = append(errs, errors.New("authorization_code needs a store and a sealer for the refresh token"))
		}
	default:
		errs = append(errs, fmt.Errorf("flow %q: want %s or %s", o.Flow, ClientCredentials, AuthorizationCode))
	}
	if o.Fleet != nil && (o.Store == nil || o.Sealer == nil) {
		errs = append(errs, errors.New("a fleet needs a store and a sealer to share the access token"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("oauth: server %s: %w", o.Server, err)
	}
	return nil
}

func (o *Options) endpoint() oauth2.Endpoint {
	ep := microsoft.AzureADEndpoint(o.Tenant)
	if o.AuthURL != "" {
		ep.AuthURL = o.AuthURL
	}
	if o.TokenURL != "" {
		ep.TokenURL = o.TokenURL
	}
	// Client id and secret in the body: with AuthStyleAutoDetect the first request is tried both ways.
	ep.AuthStyle = oauth2.AuthStyleInParams
	return ep
}

func (o *Options) scopes() []string {
	if len(o.Scopes) > 0 {
		return o.Scopes
	}
	api := o.API
	if api == "" {
		api = APISMTP
	}
	return defaultScopes[api][o.Flow]
}

func (o *Options) clientCredentials() *clientcredentials.Config {
	ep := o.endpoint()
	return &clientcredentials.Config{
		ClientID: o.ClientID, ClientSecret: o.ClientSecret.Reveal(),
		TokenURL: ep.TokenURL, Scopes: o.scopes(), AuthStyle: ep.AuthStyle,
	}
}

func (o *Options) authorizationCode() *oauth2.Config {
	return &oauth2.Config{
		ClientID: o.ClientID, ClientSecret: o.ClientSecret.Reveal(),
		Endpoint: o.endpoint(), RedirectURL: o.RedirectURL, Scopes: o.scopes(),
	}
}
