package graph

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/internal/shaping"
)

// DefaultEndpoint is Microsoft Graph v1.0 in the global cloud.
const DefaultEndpoint = "https://graph.microsoft.com/v1.0"

// Audience is the resource a token for this transport must be issued for: client credentials ask
// for Audience + "/.default" (application permission Mail.Send), delegated tokens for
// Audience + "/Mail.Send". A token for outlook.office365.com (SMTP AUTH) is refused by Graph.
const Audience = "https://graph.microsoft.com"

// Limits Microsoft documents for Graph and for Exchange Online mailboxes.
const (
	// MaxRequestBytes is the largest Graph request: the base64 MIME of sendMail, a draft, or one
	// attachment posted inline (https://learn.microsoft.com/graph/api/user-sendmail, 4 MB).
	MaxRequestBytes = 4 << 20
	// DefaultMaxMessageBytes is Exchange Online's default mailbox message size limit (35 MB), which a
	// tenant may raise up to 150 MB.
	DefaultMaxMessageBytes = 35 << 20
	// uploadSessionMin is the attachment size from which Microsoft says to use an upload session
	// (3 MB to 150 MB); smaller attachments are posted whole. Decimal megabytes: a file just under 3 MiB
	// posted whole would be base64 plus JSON over the 4 MiB request limit.
	uploadSessionMin = 3_000_000
	// uploadChunkBytes is one PUT of an upload session: Microsoft allows up to 4 MB a request.
	uploadChunkBytes = 3 << 20
)

// TokenSource hands out OAuth 2.0 access tokens for Graph; auth/oauth implements it. Invalidate drops
// a token Graph answered 401 to, so the next Token call fetches a fresh one.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
	Invalidate(token string)
}

// Options configures one Graph sending mailbox. Limits: 0 = Microsoft's default, negative = no limit.
type Options struct {
	// Name identifies the transport in logs and the queue (the config's graph server name).
	Name string
	// Mailbox is the user principal name or id of the mailbox that sends (POST /users/{Mailbox}/sendMail).
	Mailbox string
	// Endpoint is the Graph base URL; default DefaultEndpoint. National clouds and tests override it.
	// It must be https: the token is a bearer credential.
	Endpoint string
	Tokens   TokenSource
	// RootCAs verifies Graph's certificate; nil = the system roots. Tests inject their server's.
	RootCAs *x509.CertPool

	// MaxConcurrent bounds requests in flight for the mailbox: Graph allows 4 per app and mailbox.
	MaxConcurrent int
	// MessagesPerMinute and RecipientsPerDay are Exchange Online's sending limits (30 and 10,000),
	// which hold for a mailbox whatever protocol it sends with.
	MessagesPerMinute int
	RecipientsPerDay  int
	// MaxMessageBytes is the mailbox's message size limit; default DefaultMaxMessageBytes.
	MaxMessageBytes int64
	// MaxShapingWait is how long Deliver waits for the per-minute rate before deferring. Default 10s.
	MaxShapingWait time.Duration
	// RequestTimeout bounds one HTTP request (an upload chunk included). Default 2m.
	RequestTimeout time.Duration
	// ThrottleRetryAfter is the wait after a 429/503 without a Retry-After header. Default 30s.
	ThrottleRetryAfter time.Duration
	// QuotaPause is how long the mailbox is paused after a quota answer when mailgate has counted
	// nothing from which to tell when its daily window frees up. Default 1h.
	QuotaPause time.Duration
	// TempDir holds the attachments of a large message while they are uploaded; default os.TempDir().
	TempDir string

	// Budgets is the process's registry of per-mailbox shaping state, kept across reloads. nil: private.
	Budgets *Budgets
	Logger  *slog.Logger
	// ShapingWait, when set, observes how long each sent message waited for the per-minute budget, in
	// seconds (mailgate_shaping_wait_seconds{server}).
	ShapingWait Observer
}

// Observer takes one measurement (prometheus.Observer is one).
type Observer interface{ Observe(float64) }

func (o *Options) setDefaults() error {
	var problems []error
	if o.Name == "" {
		problems = append(problems, errors.New("name is empty"))
	}
	if !relay.ValidAddress(o.Mailbox) {
		problems = append(problems, fmt.Errorf("mailbox %q is not an address", o.Mailbox))
	}
	if o.Tokens == nil {
		problems = append(problems, errors.New("no token source"))
	}
	if o.Endpoint == "" {
		o.Endpoint = DefaultEndpoint
	}
	o.Endpoint = strings.TrimRight(o.Endpoint, "/")
	if u, err := url.Parse(o.Endpoint); err != nil || u.Scheme != "https" || u.Host == "" {
		problems = append(problems, fmt.Errorf("endpoint %q must be an https URL", o.Endpoint))
	}
	if len(problems) > 0 {
		return errors.Join(problems...)
	}
	o.MaxConcurrent = shaping.Limit(o.MaxConcurrent, 4)
	if o.MaxConcurrent < 0 {
		o.MaxConcurrent = 1 << 16
	}
	o.MessagesPerMinute = shaping.Limit(o.MessagesPerMinute, 30)
	o.RecipientsPerDay = shaping.Limit(o.RecipientsPerDay, 10000)
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	o.MaxShapingWait = shaping.Duration(o.MaxShapingWait, 10*time.Second)
	o.RequestTimeout = shaping.Duration(o.RequestTimeout, 2*time.Minute)
	o.ThrottleRetryAfter = shaping.Duration(o.ThrottleRetryAfter, 30*time.Second)
	o.QuotaPause = shaping.Duration(o.QuotaPause, time.Hour)
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}
