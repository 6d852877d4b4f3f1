// Package ses delivers mailgate's composed messages through the Amazon SES API v2 (SendEmail with Raw
// content) and checks, at start-up, that the account and the channels' configuration sets are what the
// operator configured.
//
// Design:
//
//   - The message SES sends is exactly the composed MIME message in the spool: it is read fully here
//     (at most MaxMessageBytes, 40 MB) and sent as Content.Raw. FromEmailAddress is the channel's From
//     address, the sending identity SES authorises — not the envelope sender: SES sets MAIL FROM
//     itself, from the identity's custom MAIL FROM domain or its own amazonses.com domain, which is why
//     config refuses mail_from on SES channels. Destination carries the envelope recipients,
//     so Bcc recipients that appear in no header are still delivered (SES, like RFC 5321 §3.3, sends to
//     the envelope, not to the headers). SES accepts at most 50 destinations per call, so longer envelopes
//     are sent in batches of 50, each answered with its own MessageId.
//   - The SDK never retries (RetryMaxAttempts = 1): the queue owns retries, so a throttled message is
//     rescheduled with all the others instead of holding a worker in an SDK back-off loop.
//   - Every SES answer is mapped to a *relay.Error by one table (classify.go): throttling, quotas,
//     paused sending and SES's own failures are temporary; a rejected message is permanent and becomes a
//     bounce with SES's text as the diagnostic; a suspended account is deferred and raised as an alert,
//     because bouncing customers' addresses for an account problem would lose their mail.
//   - A token bucket shared by every worker keeps the account under its configured maximum send rate;
//     each destination address counts as one message, as SES counts them.
//   - Force TLS on an SES channel means the channel's configuration set has TLS policy REQUIRE; Check
//     confirms it at start-up and Problems reports any mismatch for /readyz.
//   - Check (at start, on reload, and periodically through Watch) also reads each channel's sending
//     identity (GetEmailIdentity on the From address, then its domain): not verified for sending, or a
//     failing custom MAIL FROM domain with REJECT_MESSAGE, makes a Problem with the remedy and holds
//     the channel's mail as a setup fault (deferred, never bounced) until a check finds it fixed;
//     failed DKIM is a Problem without holding mail (SES still sends, unsigned).
//
// The SES bounce and complaint notifications (SNS) are handled by the events subpackage.
package ses

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/sesv2"
	"github.com/aws/aws-sdk-go-v2/service/sesv2/types"

	"github.com/mailgate/mailgate/relay"
)

// MaxMessageBytes is the largest final composed MIME message SES accepts: "40 MB, including base64
// encoding" (SES v2 quotas). AWS does not say whether its MB is 10^6 or 2^20 bytes, so mailgate takes
// the smaller reading, 40,000,000 bytes: a message accepted at DATA under this limit can never be refused
// by SES for its size, whichever reading AWS applies. The submission side checks it at DATA (552 5.3.4);
// Deliver refuses larger messages too, so an oversized spool entry bounces at once instead of being
// retried.
const MaxMessageBytes = 40_000_000

// MaxDestinations is how many recipients SES accepts in one SendEmail call (SES v2 quotas: 50).
const MaxDestinations = 50

// TransportName is the name the queue and the metrics use for this transport.
const TransportName = "ses"

// API is the part of the SES v2 client mailgate uses; *sesv2.Client satisfies it. Declared here so
// tests can put an httptest server or a fake behind it.
type API interface {
	SendEmail(ctx context.Context, in *sesv2.SendEmailInput, optFns ...func(*sesv2.Options)) (*sesv2.SendEmailOutput, error)
	GetAccount(ctx context.Context, in *sesv2.GetAccountInput, optFns ...func(*sesv2.Options)) (*sesv2.GetAccountOutput, error)
	GetConfigurationSet(ctx context.Context, in *sesv2.GetConfigurationSetInput, optFns ...func(*sesv2.Options)) (*sesv2.GetConfigurationSetOutput, error)
	GetEmailIdentity(ctx context.Context, in *sesv2.GetEmailIdentityInput, optFns ...func(*sesv2.Options)) (*sesv2.GetEmailIdentityOutput, error)
}

// Channel is what the SES transport needs to know about one mailgate channel.
type Channel struct {
	// From is the channel's From address: the SES sending identity (FromEmailAddress), checked to be
	// verified (itself or its domain) by Check. SES chooses the envelope sender itself (its own
	// amazonses.com MAIL FROM, or the identity's custom MAIL FROM domain), so a channel cannot set one.
	From string
	// ConfigurationSet is the SES configuration set its mail is sent with ("" = none). It selects the
	// event destinations (bounce/complaint notifications) and, for Force TLS, the TLS policy.
	ConfigurationSet string
	// ForceTLS means SES must deliver over TLS only: the configuration set's TLS policy must be REQUIRE.
	ForceTLS bool
	// TenantName, when set, sends the channel's mail as that SES tenant (reputation and sending
	// status kept per tenant).
	TenantName string
	// IdentityARN, when set, is the ARN of the sending identity another AWS account authorised this one
	// to use (sending authorization: FromEmailAddressIdentityArn, SES v1's SourceArn). That identity
	// lives in the other account, so Check cannot read it and does not hold the channel's mail for it.
	IdentityARN string
}

// Options configure a Transport. The zero value of every field but Region is usable.
type Options struct {
	// Region is the AWS region of the SES account, e.g. "eu-west-1". Empty means the AWS default chain
	// (AWS_REGION, shared config).
	Region string
	// Endpoint overrides the SES endpoint (an emulator, a VPC endpoint). Setting it disables the EC2
	// metadata service: an endpoint override means mailgate is not relying on an instance role.
	Endpoint string
	// Credentials, when set, are used instead of the AWS default credential chain (environment, shared
	// files, SSO, container and EC2 instance roles); they also disable the EC2 metadata service.
	Credentials aws.CredentialsProvider
	// DisableIMDS turns the EC2 metadata service off even without Endpoint or Credentials, so that
	// credential lookups off EC2 fail at once instead of waiting seconds for a metadata timeout.
	DisableIMDS bool
	// Channels maps a channel name (relay.Message.Channel) to its SES settings.
	Channels map[string]Channel
	// MaxSendRate is the most messages per second (each recipient counts as one) sent by all workers
	// together; 0 means no local limit.
	MaxSendRate float64
	// SendRate, when set, makes MaxSendRate the fleet's: one bucket in the shared store for every
	// instance sending through this account and region, instead of one per process.
	SendRate SendRate
	// Logger receives one line per event; nil discards.
	Logger *slog.Logger
	// Client replaces the SDK client built from the fields above (tests use a fake).
	Client API
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Transport sends messages through SES. It is safe for concurrent use by all queue workers.
type Transport struct {
	api      API
	channels map[string]Channel
	log      *slog.Logger
	bucket   pacer // nil: no rate limit
	now      func() time.Time

	mu       sync.Mutex
	checked  []Problem            // found by the last Check
	alerts   map[alertKey]Problem // live alerts raised by SES answers, cleared by a successful send
	policies map[string]bool      // configuration set → TLS policy confirmed REQUIRE (false = mismatch)
	// identities is what the last Check learnt about each channel's sending identity (absent: not
	// checked, or SES could not be asked).
	identities map[string]identityState
	recheck    chan struct{} // Deliver asks Watch for an early Check (buffered 1)
}

// New builds a Transport. Unless opts.Client is set it loads the AWS configuration (region, credentials)
// with config.LoadDefaultConfig, which does no network I/O: credentials are resolved at the first call.
func New(ctx context.Context, opts Options) (*Transport, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	for name, ch := range opts.Channels {
		if err := ValidateChannel(name, ch); err != nil {
			return nil, err
		}
	}
	if opts.MaxSendRate < 0 {
		return nil, fmt.Errorf("ses: max send rate %v is negative", opts.MaxSendRate)
	}
	api := opts.Client
	if api == nil {
		var err error
		api, err = newClient(ctx, opts)
		if err != nil {
			return nil, err
		}
	}
	t := &Transport{
		api:        api,
		channels:   opts.Channels,
		log:        log,
		now:        now,
		alerts:     map[alertKey]Problem{},
		policies:   map[string]bool{},
		identities: map[string]identityState{},
		recheck:    make(chan struct{}, 1),
	}
	switch {
	case opts.MaxSendRate > 0 && opts.SendRate != nil:
		t.bucket = &fleetBucket{rate: opts.SendRate, key: "ses/" + opts.Region, per: opts.MaxSendRate}
	case opts.MaxSendRate > 0:
		t.bucket = newBucket(opts.MaxSendRate)
	}
	return t, nil
}

func newClient(ctx context.Context, opts Options) (*sesv2.Client, error) {
	var load []func(*config.LoadOptions) error
	if opts.Region != "" {
		load = append(load, config.WithRegion(opts.Region))
	}
	if opts.Credentials != nil {
		load = append(load, config.WithCredentialsProvider(opts.Credentials))
	}
	if opts.DisableIMDS || opts.Endpoint != "" || opts.Credentials != nil {
		// Off EC2 the metadata service is unreachable and each lookup waits for a timeout (~4-5 s).
		load = append(load, config.WithEC2IMDSClientEnableState(imds.ClientDisabled))
	}
	cfg, err := config.LoadDefaultConfig(ctx, load...)
	if err != nil {
		return nil, fmt.Errorf("ses: load AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("ses: no AWS region configured (set the SES region or AWS_REGION)")
	}
	if cfg.Credentials != nil {
		cfg.Credentials = markedCredentials{cfg.Credentials}
	}
	return sesv2.NewFromConfig(cfg, func(o *sesv2.Options) {
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
		// The queue owns retries: one attempt per Deliver.
		o.RetryMaxAttempts = 1
	}), nil
}

// markedCredentials tags a credential lookup failure, which the SDK reports as an untyped error, so
// classify can tell "no usable credentials" (an operator problem: alert) from a network failure.
type markedCredentials struct{ aws.CredentialsProvider }

func (m markedCredentials) Retrieve(ctx context.Context) (aws.Credentials, error) {
	c, err := m.CredentialsProvider.Retrieve(ctx)
	if err != nil {
		return c, &credentialsError{err}
	}
	return c, nil
}

// credentialsError is a failure to obtain AWS credentials.
type credentialsError struct{ err error }

func (e *credentialsError) Error() string { return "AWS credentials: " + e.err.Error() }
func (e *credentialsError) Unwrap() error { return e.err }

// ValidateChannel reports a channel configuration SES cannot honour: Force TLS is only expressible as a
// configuration set with TLS policy REQUIRE, so a Force TLS channel without a configuration set is an
// error (config validation calls this too).
func ValidateChannel(name string, ch Channel) error {
	if ch.ForceTLS && ch.ConfigurationSet == "" {
		return fmt.Errorf("ses: channel %q has Force TLS but no configuration set: SES enforces TLS only through a configuration set with TLS policy REQUIRE", name)
	}
	return nil
}

// Deliver sends m through SES. The Reply of a successful Result is SES's MessageId (several, comma
// separated, when the envelope needed more than one call). Failures are *relay.Error values whose code
// says whether the queue retries (4xx) or bounces (5xx).
func (t *Transport) Deliver(ctx context.Context, m *relay.Message) relay.Result {
	log := t.log.With("queue_id", m.QueueID, "channel", m.Channel, "transport", TransportName)
	if len(m.Recipients) == 0 {
		return relay.Result{}
	}
	ch := t.channels[m.Channel]
	if err := t.tlsGuard(m, ch); err != nil {
		log.Error("ses refused to send: force TLS not guaranteed", "err", err)
		return relay.Failed(len(m.Recipients), err)
	}
	if err := t.identityGuard(m); err != nil {
		log.Warn("ses channel's identity cannot send; mail deferred", "err", err)
		return relay.Failed(len(m.Recipients), err)
	}
	raw, err := readMessage(m)
	if err != nil {
		return relay.Failed(len(m.Recipients), err)
	}

	res := relay.Result{Errs: make([]error, len(m.Recipients))}
	var ids []string
	for start := 0; start < len(m.Recipients); start += MaxDestinations {
		end := min(start+MaxDestinations, len(m.Recipients))
		id, err := t.send(ctx, m, ch, raw, m.Recipients[start:end])
		if err != nil {
			log.Warn("ses send failed", "recipients", end-start, "err", err)
			for i := start; i < end; i++ {
				res.Errs[i] = err
			}
			continue
		}
		ids = append(ids, id)
	}
	res.Reply = strings.Join(ids, ", ")
	return res
}

// tlsGuard refuses to hand a Force TLS message to SES unless SES was confirmed to require TLS for it: a
// policy that is OPTIONAL, or that could not be read (SES unreachable at start), holds the message
// (fail closed). These are operator or account problems, so the message is deferred as a setup fault
// (the operator alerted through Problems and the queue's alert), never bounced.
func (t *Transport) tlsGuard(m *relay.Message, ch Channel) error {
	if !m.ForceTLS && !ch.ForceTLS {
		return nil
	}
	if ch.ConfigurationSet == "" {
		return setup(relay.Errorf(451, codeTLSPolicy, "tls_policy",
			"SES channel %q requires TLS but has no configuration set", m.Channel))
	}
	t.mu.Lock()
	require, known := t.policies[ch.ConfigurationSet]
	t.mu.Unlock()
	switch {
	case !known:
		select {
		case t.recheck <- struct{}{}:
		default:
		}
		return setup(relay.Errorf(451, codeTLSPolicy, "tls_policy",
			"the TLS policy of SES configuration set %q is not confirmed yet; Force TLS mail waits", ch.ConfigurationSet))
	case !require:
		return setup(relay.Errorf(451, codeTLSPolicy, "tls_policy",
			"SES configuration set %q does not require TLS", ch.ConfigurationSet))
	}
	return nil
}

// readMessage reads the composed message, refusing anything over MaxMessageBytes.
func readMessage(m *relay.Message) ([]byte, error) {
	if m.Size > MaxMessageBytes {
		return nil, tooBig(m.Size)
	}
	if m.Open == nil {
		return nil, relay.Errorf(451, relay.CodeTempLocal, "spool", "message body unavailable")
	}
	rc, err := m.Open()
	if err != nil {
		return nil, relay.Wrap(err, 451, relay.CodeTempLocal, "spool", "cannot read the queued message")
	}
	defer rc.Close()
	var buf bytes.Buffer
	if m.Size > 0 {
		buf.Grow(int(m.Size))
	}
	n, err := buf.ReadFrom(io.LimitReader(rc, MaxMessageBytes+1))
	if err != nil {
		return nil, relay.Wrap(err, 451, relay.CodeTempLocal, "spool", "cannot read the queued message")
	}
	if n > MaxMessageBytes {
		return nil, tooBig(n)
	}
	return buf.Bytes(), nil
}

func tooBig(n int64) *relay.Error {
	return relay.Errorf(552, relay.CodeTooBig, "size",
		"message is %d bytes, over the SES limit of %d bytes", n, MaxMessageBytes)
}

// send makes one SendEmail call for up to MaxDestinations recipients.
func (t *Transport) send(ctx context.Context, m *relay.Message, ch Channel, raw []byte, rcpts []string) (string, error) {
	if t.bucket != nil {
		if err := t.bucket.wait(ctx, float64(len(rcpts))); err != nil {
			return "", relay.Wrap(err, 451, relay.CodeTempTimeout, "rate_limit", "SES send rate wait interrupted")
		}
	}
	in := &sesv2.SendEmailInput{
		Content:     &types.EmailContent{Raw: &types.RawMessage{Data: raw}},
		Destination: &types.Destination{ToAddresses: rcpts},
		EmailTags:   emailTags(m),
	}
	// FromEmailAddress is the sending identity SES authorises, not the envelope sender: the channel's
	// From (SES picks the MAIL FROM from the identity's custom MAIL FROM domain, or its own).
	switch {
	case ch.From != "":
		in.FromEmailAddress = aws.String(ch.From)
	case m.MailFrom != "":
		in.FromEmailAddress = aws.String(m.MailFrom)
	}
	if ch.ConfigurationSet != "" {
		in.ConfigurationSetName = aws.String(ch.ConfigurationSet)
	}
	if ch.TenantName != "" {
		in.TenantName = aws.String(ch.TenantName)
	}
	if ch.IdentityARN != "" {
		in.FromEmailAddressIdentityArn = aws.String(ch.IdentityARN)
	}
	out, err := t.api.SendEmail(ctx, in)
	if err != nil {
		rerr := classify(err)
		t.noteAlert(m.Channel, rerr)
		return "", rerr
	}
	t.clearAlerts(m.Channel)
	if out.MessageId == nil || *out.MessageId == "" {
		// SES accepted the call; without an id there is nothing to retry safely (a retry would send twice).
		return "(no MessageId)", nil
	}
	return *out.MessageId, nil
}

// Tag names mailgate puts on each message. With a configuration set, SES copies message tags into the
// bounce and complaint events ("mail.tags"), which is how the events handler finds the queue id and
// channel of a bounced message.
const (
	TagQueueID = "mailgate-queue-id"
	TagChannel = "mailgate-channel"
)

func emailTags(m *relay.Message) []types.MessageTag {
	var tags []types.MessageTag
	if validTagValue(m.QueueID) {
		tags = append(tags, types.MessageTag{Name: aws.String(TagQueueID), Value: aws.String(m.QueueID)})
	}
	if validTagValue(m.Channel) {
		tags = append(tags, types.MessageTag{Name: aws.String(TagChannel), Value: aws.String(m.Channel)})
	}
	return tags
}

// validTagValue reports whether SES accepts s as a tag value: ASCII letters, digits, '_' and '-', at
// most 256 characters.
func validTagValue(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
		if !ok {
			return false
		}
	}
	return true
}
