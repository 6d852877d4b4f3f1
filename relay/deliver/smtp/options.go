package smtp

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/mailgate/mailgate/relay/deliver/internal/shaping"
	"github.com/mailgate/mailgate/relay/metrics"
)

// TLSMode is how the connection to the upstream is secured.
type TLSMode string

const (
	// TLSStartTLS connects in plain text and upgrades with STARTTLS (RFC 3207) whenever the server
	// offers it (port 587/25 style). Without Force TLS and without credentials, a server that offers no
	// STARTTLS is used in plain text, as Postfix's "may" level does.
	TLSStartTLS TLSMode = "starttls"
	// TLSImplicit starts TLS at connect time (RFC 8314 §3, port 465 style).
	TLSImplicit TLSMode = "implicit"
)

// AuthMode is how mailgate authenticates to the upstream.
type AuthMode string

const (
	AuthNone AuthMode = "none"
	// AuthLogin is password authentication preferring AUTH LOGIN (Exchange Online refuses PLAIN) and
	// falling back to PLAIN when the server offers no LOGIN.
	AuthLogin AuthMode = "login"
	// AuthPlain is password authentication preferring AUTH PLAIN (RFC 4616), LOGIN as the fallback.
	AuthPlain AuthMode = "plain"
	// AuthXOAUTH2 authenticates with an OAuth 2.0 access token from Options.Tokens (Microsoft 365).
	AuthXOAUTH2 AuthMode = "xoauth2"
)

// Provider selects shaping defaults for a known upstream.
type Provider string

const (
	ProviderGeneric Provider = ""
	// ProviderMicrosoft applies Exchange Online's documented sending limits as defaults: 3 concurrent
	// connections per mailbox, 30 messages a minute, 10,000 recipients a day.
	ProviderMicrosoft Provider = "microsoft"
)

// TokenSource hands out OAuth 2.0 access tokens for XOAUTH2. It is declared here, by its consumer, and
// implemented by auth/oauth: Token returns a cached token (refreshing it when needed, one refresh in
// flight), Invalidate drops a token the server refused so the next Token call fetches a fresh one.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
	Invalidate(token string)
}

// Options configures one upstream SMTP server. Zero values take the defaults documented on each field.
// Limits: 0 = the provider's default, a negative value = no limit.
type Options struct {
	// Name identifies the server in logs and metrics (the config's server name, e.g. "m365").
	Name string
	Host string
	Port int // default 587 (starttls) or 465 (implicit)
	TLS  TLSMode
	// TLSServerName is the name the certificate must be valid for; default Host.
	TLSServerName string
	// RootCAs verifies the upstream's certificate; nil = the system roots. Tests inject the peer's
	// self-signed certificate here.
	RootCAs *x509.CertPool

	Auth AuthMode
	// Username and Password are the decrypted credentials for AuthLogin/AuthPlain, held in memory only.
	Username, Password string
	// Tokens supplies access tokens for AuthXOAUTH2; Mailbox is the user= of the XOAUTH2 response
	// (default Username).
	Tokens  TokenSource
	Mailbox string

	Provider Provider
	// HeloName is sent in EHLO; default the host name of this machine.
	HeloName string

	// MaxConnections bounds concurrent connections (active + pooled) to this server.
	// Default 3 for Microsoft, 10 otherwise.
	MaxConnections int
	// MessagesPerMinute bounds messages sent in any rolling minute. Default 30 for Microsoft, none otherwise.
	MessagesPerMinute int
	// RecipientsPerDay bounds recipients sent in any rolling 24 hours. Default 10,000 for Microsoft.
	RecipientsPerDay int
	// MaxMessageBytes is the configured size limit; the upstream's SIZE (RFC 1870) is honoured too.
	MaxMessageBytes int64
	// DisableChunking sends DATA even to a server that offers CHUNKING (RFC 3030). By default a server
	// offering CHUNKING and PIPELINING gets each message as one pipelined group ending in BDAT LAST:
	// one round trip per message instead of two. The switch is for an upstream whose BDAT is broken.
	DisableChunking bool
	// MaxShapingWait is how long Deliver waits for the per-minute rate to allow a message before
	// deferring it with RetryAfter instead. Default 10s.
	MaxShapingWait time.Duration

	// Timeouts, with RFC 5321 §4.5.3.2 values as defaults: DialTimeout 30s (connect and TLS handshake),
	// CommandTimeout 5m (each command's reply, including the greeting), DataTimeout 3m (each block of
	// DATA written without progress), FinalReplyTimeout 10m (the reply after the final dot).
	DialTimeout, CommandTimeout, DataTimeout, FinalReplyTimeout time.Duration
	// IdleTimeout closes pooled connections unused for this long. Default 30s.
	IdleTimeout time.Duration
	// ThrottleRetryAfter is the RetryAfter given to a 432 4.3.2 (Exchange "concurrent connections
	// limit exceeded") deferral. Default 1m.
	ThrottleRetryAfter time.Duration
	// QuotaPause is how long the server is paused after a 554 5.2.0 quota reply when mailgate has no
	// record of its own from which to compute when the daily window frees up. Default 1h.
	QuotaPause time.Duration

	// Budgets is the process's registry of per-identity shaping state (slots, windows, quota pause), so
	// a Transport rebuilt by a reload shares them with the one it replaces. nil: a private one.
	Budgets *Budgets

	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

func (o *Options) setDefaults() error {
	var problems []error
	if o.Host == "" {
		problems = append(problems, errors.New("host is empty"))
	}
	switch o.TLS {
	case "":
		o.TLS = TLSStartTLS
	case TLSStartTLS, TLSImplicit:
	default:
		problems = append(problems, fmt.Errorf("tls mode %q: must be starttls or implicit", o.TLS))
	}
	switch o.Auth {
	case "":
		o.Auth = AuthNone
	case AuthNone:
	case AuthLogin, AuthPlain:
		if o.Username == "" {
			problems = append(problems, fmt.Errorf("auth %s needs a username", o.Auth))
		}
	case AuthXOAUTH2:
		if o.Tokens == nil {
			problems = append(problems, errors.New("auth xoauth2 needs a token source"))
		}
		if o.Mailbox == "" {
			o.Mailbox = o.Username
		}
		if o.Mailbox == "" {
			problems = append(problems, errors.New("auth xoauth2 needs the mailbox"))
		}
	default:
		problems = append(problems, fmt.Errorf("auth %q: must be none, login, plain or xoauth2", o.Auth))
	}
	switch o.Provider {
	case ProviderGeneric, ProviderMicrosoft:
	case "generic":
		o.Provider = ProviderGeneric
	default:
		problems = append(problems, fmt.Errorf("provider %q: must be microsoft or generic", o.Provider))
	}
	if len(problems) > 0 {
		return errors.Join(problems...)
	}
	if o.Port == 0 {
		o.Port = 587
		if o.TLS == TLSImplicit {
			o.Port = 465
		}
	}
	if o.Name == "" {
		o.Name = o.Host
	}
	if o.TLSServerName == "" {
		o.TLSServerName = o.Host
	}
	if o.HeloName == "" {
		o.HeloName, _ = os.Hostname()
		if o.HeloName == "" {
			o.HeloName = "localhost"
		}
	}
	ms := o.Provider == ProviderMicrosoft
	o.MaxConnections = shaping.Limit(o.MaxConnections, pick(ms, 3, 10))
	if o.MaxConnections < 0 {
		o.MaxConnections = 1 << 16 // "no limit" still needs a semaphore size
	}
	o.MessagesPerMinute = shaping.Limit(o.MessagesPerMinute, pick(ms, 30, -1))
	o.RecipientsPerDay = shaping.Limit(o.RecipientsPerDay, pick(ms, 10000, -1))
	o.MaxShapingWait = shaping.Duration(o.MaxShapingWait, 10*time.Second)
	o.DialTimeout = shaping.Duration(o.DialTimeout, 30*time.Second)
	o.CommandTimeout = shaping.Duration(o.CommandTimeout, 5*time.Minute)
	o.DataTimeout = shaping.Duration(o.DataTimeout, 3*time.Minute)
	o.FinalReplyTimeout = shaping.Duration(o.FinalReplyTimeout, 10*time.Minute)
	o.IdleTimeout = shaping.Duration(o.IdleTimeout, 30*time.Second)
	o.ThrottleRetryAfter = shaping.Duration(o.ThrottleRetryAfter, time.Minute)
	o.QuotaPause = shaping.Duration(o.QuotaPause, time.Hour)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

func pick(ms bool, microsoft, generic int) int {
	if ms {
		return microsoft
	}
	return generic
}
