// Package events receives SES bounce, complaint and delivery-delay notifications through an Amazon SNS
// HTTP(S) subscription and feeds them to mailgate's bounce store and suppression list.
//
// Design: the Handler is an http.Handler served alone on the events listener (relay/admin.Events, at
// /ses/events), never beside the operator API: SNS must reach it from the internet.
// Every request is treated as hostile until proven otherwise:
//
//  1. the body is bounded (SNS messages are at most 256 KiB, JSON escaping can double that);
//  2. the SNS message type must be one of Notification, SubscriptionConfirmation,
//     UnsubscribeConfirmation, and the topic one the operator configured;
//  3. only then, the signature is verified (SignatureVersion 1 = SHA1withRSA, 2 = SHA256withRSA) over
//     the canonical string AWS defines, with a certificate fetched only from
//     https://sns.<region of the topic>.amazonaws.com[.cn]/…pem, cached (failures too, for a minute),
//     and valid now — so nothing an unauthenticated sender names is resolved or fetched;
//  4. only then is a SubscriptionConfirmation confirmed (GET of its SubscribeURL, itself checked to be an
//     SNS host) or a Notification acted on.
//
// Refusals answer 4xx, are logged and counted in mailgate_ses_events_total{type,result="refused"}.
// Notifications are idempotent: each is claimed with MarkProcessed before it changes anything, keyed by
// SES's feedback id when it has one (the same bounce published through two topics is recorded once) and
// SNS's MessageId otherwise. A failure of the store answers 500 so SNS redelivers; the claim is released
// first if the store supports ForgetProcessed.
//
// What each SES event does: Bounce Permanent → relay.Bounce recorded (the store also suppresses the
// address); Bounce Transient/Undetermined → logged; Complaint → address suppressed; DeliveryDelay →
// logged; other SES events (Delivery, Send, Open, ...) → logged as ignored.
package events

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/ses"
	"github.com/mailgate/mailgate/relay/metrics"
)

// Bounces records permanently bounced recipients. Per relay.Bounce, recording also puts the address on
// the suppression list.
type Bounces interface {
	RecordBounce(ctx context.Context, b relay.Bounce) error
}

// Suppressions puts an address on the suppression list (complaints: the recipient did not bounce but
// must not be mailed again).
type Suppressions interface {
	Suppress(ctx context.Context, addr, reason, source string) error
}

// Processed remembers which notifications were handled, so SNS's at-least-once delivery never records a
// bounce twice. MarkProcessed must be atomic: first is true for exactly one caller per id.
type Processed interface {
	MarkProcessed(ctx context.Context, notificationID string) (first bool, err error)
}

// Forgetter is optionally implemented by a Processed store: the handler releases its claim when acting
// on a notification failed, so SNS's redelivery is processed instead of skipped.
type Forgetter interface {
	ForgetProcessed(ctx context.Context, notificationID string) error
}

// DefaultMaxBodyBytes bounds a request body: SNS messages are at most 256 KiB, and JSON escaping of the
// embedded SES event can double that.
const DefaultMaxBodyBytes = 1 << 20

// Options configure a Handler. Bounces, Suppressions and Processed are required.
type Options struct {
	Bounces      Bounces
	Suppressions Suppressions
	Processed    Processed
	// TopicARNs are the SNS topics whose messages are accepted (required). Anyone with an AWS account
	// can sign SNS messages from a topic of their own, so a message is refused on its topic before its
	// signing certificate is fetched: an unauthenticated POST never makes mailgate resolve or fetch a
	// host it names.
	TopicARNs []string
	// Fetcher GETs signing certificates and SubscribeURLs; nil means HTTPFetcher{}.
	Fetcher Fetcher
	// Roots, when set, must issue the signing certificates (tests); nil relies on HTTPS to the SNS host.
	Roots *x509.CertPool
	// Channels maps an SES configuration set to a channel name, to name the channel in bounce records
	// when the event lacks mailgate's channel tag.
	Channels map[string]string
	// MaxBodyBytes bounds the request body; 0 means DefaultMaxBodyBytes.
	MaxBodyBytes int64
	Logger       *slog.Logger
	Metrics      *metrics.Metrics // nil: not counted
	Now          func() time.Time
}

// Handler is the SNS endpoint. It is safe for concurrent use.
type Handler struct {
	opts     Options
	verifier *Verifier
	fetch    Fetcher
	log      *slog.Logger
	now      func() time.Time
}

// New builds a Handler.
func New(opts Options) (*Handler, error) {
	if opts.Bounces == nil || opts.Suppressions == nil || opts.Processed == nil {
		return nil, errors.New("ses events: Bounces, Suppressions and Processed are required")
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	fetch := opts.Fetcher
	if fetch == nil {
		fetch = HTTPFetcher{}
	}
	if len(opts.TopicARNs) == 0 {
		return nil, errors.New("ses events: TopicARNs is required: any AWS account could otherwise post signed notifications")
	}
	return &Handler{opts: opts, verifier: NewVerifier(fetch, opts.Roots, now), fetch: fetch, log: log, now: now}, nil
}

// ServeHTTP handles one SNS POST.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	body, err := readBody(w, r, h.opts.MaxBodyBytes)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.refuse(w, "unknown", http.StatusRequestEntityTooLarge, "body too large", err)
		} else {
			h.refuse(w, "unknown", http.StatusBadRequest, "body unreadable", err)
		}
		return
	}
	env, err := ParseEnvelope(body)
	if err != nil {
		h.refuse(w, "unknown", http.StatusBadRequest, "malformed", err)
		return
	}
	typ := metricType(env.Type)
	if typ == "unknown" {
		h.refuse(w, "unknown", http.StatusBadRequest, "unknown SNS message type", fmt.Errorf("type %q", env.Type))
		return
	}
	if hdr := r.Header.Get("X-Amz-Sns-Message-Type"); hdr != "" && hdr != env.Type {
		h.refuse(w, typ, http.StatusBadRequest, "type header mismatch", fmt.Errorf("header %q, body %q", hdr, env.Type))
		return
	}
	if !slices.Contains(h.opts.TopicARNs, env.TopicArn) {
		h.refuse(w, typ, http.StatusForbidden, "topic not configured", fmt.Errorf("topic %q", env.TopicArn))
		return
	}
	if err := h.verifier.Verify(r.Context(), env); err != nil {
		h.refuse(w, typ, http.StatusForbidden, "signature refused", err)
		return
	}
	log := h.log.With("sns_message_id", env.MessageID, "topic", env.TopicArn)

	switch env.Type {
	case TypeSubscriptionConfirmation:
		h.confirm(w, r.Context(), env, log)
	case TypeUnsubscribeConfirmation:
		log.Warn("ses events unsubscribed: SNS will stop sending SES notifications to mailgate")
		h.count(typ, "logged")
		w.WriteHeader(http.StatusOK)
	case TypeNotification:
		status := h.notification(r.Context(), env, log)
		w.WriteHeader(status)
	}
}

func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, r.Body, max))
}

func (h *Handler) refuse(w http.ResponseWriter, typ string, status int, why string, err error) {
	h.log.Warn("ses events refused", "type", typ, "status", status, "why", why, "err", err)
	h.count(typ, "refused")
	http.Error(w, why, status)
}

func (h *Handler) count(typ, result string) {
	if h.opts.Metrics != nil {
		h.opts.Metrics.SESEvents.WithLabelValues(typ, result).Inc()
	}
}

func metricType(snsType string) string {
	switch snsType {
	case TypeNotification:
		return "notification"
	case TypeSubscriptionConfirmation:
		return "subscription_confirmation"
	case TypeUnsubscribeConfirmation:
		return "unsubscribe_confirmation"
	}
	return "unknown"
}

// confirm GETs the SubscribeURL of a verified SubscriptionConfirmation, after checking it is an SNS host.
func (h *Handler) confirm(w http.ResponseWriter, ctx context.Context, env *Envelope, log *slog.Logger) {
	const typ = "subscription_confirmation"
	if env.SubscribeURL == nil {
		h.refuse(w, typ, http.StatusBadRequest, "no SubscribeURL", errors.New("missing SubscribeURL"))
		return
	}
	if _, err := CheckSNSURL(*env.SubscribeURL); err != nil {
		h.refuse(w, typ, http.StatusForbidden, "SubscribeURL refused", err)
		return
	}
	if _, err := h.fetch.Fetch(ctx, *env.SubscribeURL); err != nil {
		log.Error("ses events subscription not confirmed", "err", err)
		h.count(typ, "error")
		http.Error(w, "confirmation failed", http.StatusBadGateway)
		return
	}
	log.Info("ses events subscription confirmed")
	h.count(typ, "confirmed")
	w.WriteHeader(http.StatusOK)
}

// notification acts on a verified Notification and returns the HTTP status to answer.
func (h *Handler) notification(ctx context.Context, env *Envelope, log *slog.Logger) int {
	ev, err := ParseEvent([]byte(env.Message))
	if err != nil {
		// Signed and from our topic, but not an SES event: refusing would only make SNS redeliver it.
		log.Warn("ses events ignored a notification that is not an SES event", "err", err)
		h.count("other", "ignored")
		return http.StatusOK
	}
	kind := ev.Kind()
	typ := eventMetricType(kind)
	switch {
	case kind == "Bounce" && ev.Bounce.BounceType == "Permanent", kind == "Complaint":
	default:
		h.logOnly(ev, log)
		h.count(typ, map[bool]string{true: "logged", false: "ignored"}[typ != "other"])
		return http.StatusOK
	}

	key := "sns:" + env.MessageID
	if id := feedbackID(ev); id != "" {
		key = "ses-feedback:" + id
	}
	first, err := h.opts.Processed.MarkProcessed(ctx, key)
	if err != nil {
		log.Error("ses events store failed", "err", err)
		h.count(typ, "error")
		return http.StatusInternalServerError
	}
	if !first {
		log.Info("ses events duplicate notification ignored", "event", kind, "key", key)
		h.count(typ, "duplicate")
		return http.StatusOK
	}
	if kind == "Bounce" {
		err = h.recordBounces(ctx, ev, log)
	} else {
		err = h.suppressComplaints(ctx, ev, log)
	}
	if err != nil {
		log.Error("ses events store failed", "event", kind, "err", err)
		h.count(typ, "error")
		if f, ok := h.opts.Processed.(Forgetter); ok {
			if ferr := f.ForgetProcessed(ctx, key); ferr != nil {
				log.Error("ses events could not release the notification; SNS's redelivery will be skipped", "key", key, "err", ferr)
			}
		}
		return http.StatusInternalServerError
	}
	h.count(typ, "recorded")
	return http.StatusOK
}

func eventMetricType(kind string) string {
	switch kind {
	case "Bounce":
		return "bounce"
	case "Complaint":
		return "complaint"
	case "DeliveryDelay":
		return "delivery_delay"
	}
	return "other"
}

func feedbackID(ev *Event) string {
	switch {
	case ev.Bounce != nil && ev.Kind() == "Bounce":
		return ev.Bounce.FeedbackID
	case ev.Complaint != nil && ev.Kind() == "Complaint":
		return ev.Complaint.FeedbackID
	}
	return ""
}

// channel names the mailgate channel of the original message: mailgate's own tag, else the
// configuration set's channel.
func (h *Handler) channel(m *Mail) string {
	if c := m.Tag(ses.TagChannel); c != "" {
		return c
	}
	return h.opts.Channels[m.Tag("ses:configuration-set")]
}

func (h *Handler) recordBounces(ctx context.Context, ev *Event, log *slog.Logger) error {
	when := parseTime(ev.Bounce.Timestamp, h.now())
	for _, r := range ev.Bounce.BouncedRecipients {
		if r.EmailAddress == "" {
			continue
		}
		code, enhanced := bounceCodes(r, ev.Bounce.BounceSubType)
		diag := strings.TrimSpace(r.DiagnosticCode)
		if diag == "" {
			diag = "SES bounce: " + ev.Bounce.BounceType + "/" + ev.Bounce.BounceSubType
		}
		b := relay.Bounce{
			Address:    r.EmailAddress,
			Channel:    h.channel(&ev.Mail),
			Time:       when,
			Code:       code,
			Enhanced:   enhanced,
			Diagnostic: diag,
			MessageID:  ev.Mail.HeaderMessageID(),
			QueueID:    ev.Mail.Tag(ses.TagQueueID),
			Reason:     "ses_bounce",
		}
		if err := h.opts.Bounces.RecordBounce(ctx, b); err != nil {
			return err
		}
		if h.opts.Metrics != nil {
			h.opts.Metrics.Bounces.WithLabelValues("ses_bounce").Inc()
		}
		log.Info("bounced", "address", r.EmailAddress, "channel", b.Channel, "queue_id", b.QueueID,
			"code", code, "enhanced", enhanced, "subtype", ev.Bounce.BounceSubType, "ses_message_id", ev.Mail.MessageID)
	}
	return nil
}

func (h *Handler) suppressComplaints(ctx context.Context, ev *Event, log *slog.Logger) error {
	reason := "SES complaint"
	if t := ev.Complaint.ComplaintFeedbackType; t != "" {
		reason += ": " + t
	}
	for _, r := range ev.Complaint.ComplainedRecipients {
		if r.EmailAddress == "" {
			continue
		}
		if err := h.opts.Suppressions.Suppress(ctx, r.EmailAddress, reason, "ses_complaint"); err != nil {
			return err
		}
		log.Info("suppressed after complaint", "address", r.EmailAddress, "channel", h.channel(&ev.Mail),
			"queue_id", ev.Mail.Tag(ses.TagQueueID), "feedback_type", ev.Complaint.ComplaintFeedbackType)
	}
	return nil
}

// logOnly logs events that change nothing in the store: transient bounces (SES retried and gave up on
// this attempt; the address may work later), delivery delays and the rest.
func (h *Handler) logOnly(ev *Event, log *slog.Logger) {
	log = log.With("event", ev.Kind(), "channel", h.channel(&ev.Mail), "queue_id", ev.Mail.Tag(ses.TagQueueID),
		"ses_message_id", ev.Mail.MessageID)
	switch ev.Kind() {
	case "Bounce":
		for _, r := range ev.Bounce.BouncedRecipients {
			log.Warn("ses transient bounce", "address", r.EmailAddress, "type", ev.Bounce.BounceType,
				"subtype", ev.Bounce.BounceSubType, "diagnostic", r.DiagnosticCode)
		}
	case "DeliveryDelay":
		for _, r := range ev.DeliveryDelay.DelayedRecipients {
			log.Warn("ses delivery delayed", "address", r.EmailAddress, "delay_type", ev.DeliveryDelay.DelayType,
				"expires", ev.DeliveryDelay.ExpirationTime, "status", r.Status, "diagnostic", r.DiagnosticCode)
		}
	default:
		log.Info("ses event ignored")
	}
}
