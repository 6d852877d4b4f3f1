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
// Notifications are idempotent: each is keyed by SES's feedback id when it has one (the same bounce
// published through two topics is recorded once) and SNS's MessageId otherwise, and the store claims the
// key and records what the notification causes in one transaction (Store.RecordNotification). A failure
// of the store answers 500 and leaves nothing claimed, so SNS's redelivery is processed. Run prunes
// claims older than Options.Retention (SNS stops retrying within an hour).
//
// What each SES event does (DESIGN §4, an address fault): Bounce Permanent → a relay.Bounce that
// suppresses the address; Complaint → a relay.Bounce (reason ses_complaint) that suppresses it; Bounce
// Transient/Undetermined → logged (the address may work later); DeliveryDelay → logged; other SES
// events (Delivery, Send, Open, ...) → logged as ignored.
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

// Store applies a notification: RecordNotification claims id and records its bounces (suppressing the
// addresses marked Suppressed) in one transaction, or does neither; first is false for an id claimed
// before. PruneProcessed forgets claims older than before. relay/store implements it.
type Store interface {
	RecordNotification(ctx context.Context, id string, bounces []relay.Bounce) (first bool, err error)
	PruneProcessed(ctx context.Context, before time.Time) (int, error)
}

// DefaultRetention is how long a notification's claim is kept: far beyond SNS's retry window (at most
// an hour for HTTP endpoints), so a late redelivery is still recognised.
const DefaultRetention = 14 * 24 * time.Hour

// DefaultMaxBodyBytes bounds a request body: SNS messages are at most 256 KiB, and JSON escaping of the
// embedded SES event can double that.
const DefaultMaxBodyBytes = 1 << 20

// Options configure a Handler. Store is required.
type Options struct {
	Store Store
	// Retention is how long claims on processed notifications are kept; 0 means DefaultRetention.
	Retention time.Duration
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
	if opts.Store == nil {
		return nil, errors.New("ses events: Store is required")
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
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
	var bounces []relay.Bounce
	if kind == "Bounce" {
		bounces = h.bounces(ev)
	} else {
		bounces = h.complaints(ev)
	}
	first, err := h.opts.Store.RecordNotification(ctx, key, bounces)
	if err != nil {
		log.Error("ses events store failed; SNS will redeliver", "event", kind, "key", key, "err", err)
		h.count(typ, "error")
		return http.StatusInternalServerError
	}
	if !first {
		log.Info("ses events duplicate notification ignored", "event", kind, "key", key)
		h.count(typ, "duplicate")
		return http.StatusOK
	}
	for _, b := range bounces {
		if h.opts.Metrics != nil {
			h.opts.Metrics.Bounces.WithLabelValues(b.Reason).Inc()
		}
		log.Info("suppressed", "event", kind, "address", b.Address, "channel", b.Channel, "queue_id", b.QueueID,
			"code", b.Code, "enhanced", string(b.Enhanced), "reason", b.Reason, "ses_message_id", ev.Mail.MessageID)
	}
	h.count(typ, "recorded")
	return http.StatusOK
}

// Run prunes the claims of processed notifications older than the retention, hourly, until ctx ends.
func (h *Handler) Run(ctx context.Context) {
	tick := time.NewTicker(time.Hour)
	defer tick.Stop()
	for {
		n, err := h.opts.Store.PruneProcessed(ctx, h.now().Add(-h.opts.Retention))
		switch {
		case err != nil && ctx.Err() == nil:
			h.log.Warn("ses events prune failed", "err", err)
		case n > 0:
			h.log.Info("ses events pruned processed notifications", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
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

// bounces are a permanent bounce's recipients as suppressing bounce records.
func (h *Handler) bounces(ev *Event) []relay.Bounce {
	when := parseTime(ev.Bounce.Timestamp, h.now())
	var out []relay.Bounce
	for _, r := range ev.Bounce.BouncedRecipients {
		if r.EmailAddress == "" {
			continue
		}
		code, enhanced := bounceCodes(r, ev.Bounce.BounceSubType)
		diag := strings.TrimSpace(r.DiagnosticCode)
		if diag == "" {
			diag = "SES bounce: " + ev.Bounce.BounceType + "/" + ev.Bounce.BounceSubType
		}
		out = append(out, h.record(ev, r.EmailAddress, when, code, enhanced, diag, "ses_bounce"))
	}
	return out
}

// complaints are a complaint's recipients as suppressing records: the recipient did not bounce, but
// told its provider the mail is unwanted, which is the address's own verdict (DESIGN §4).
func (h *Handler) complaints(ev *Event) []relay.Bounce {
	when := parseTime(ev.Complaint.Timestamp, h.now())
	diag := "SES complaint"
	if t := ev.Complaint.ComplaintFeedbackType; t != "" {
		diag += ": " + t
	}
	var out []relay.Bounce
	for _, r := range ev.Complaint.ComplainedRecipients {
		if r.EmailAddress == "" {
			continue
		}
		out = append(out, h.record(ev, r.EmailAddress, when, 550, relay.CodePolicy, diag, "ses_complaint"))
	}
	return out
}

func (h *Handler) record(ev *Event, addr string, when time.Time, code int, enhanced relay.EnhancedCode, diag, reason string) relay.Bounce {
	return relay.Bounce{
		Address:    addr,
		Channel:    h.channel(&ev.Mail),
		Time:       when,
		Code:       code,
		Enhanced:   enhanced,
		Diagnostic: diag,
		MessageID:  ev.Mail.HeaderMessageID(),
		QueueID:    ev.Mail.Tag(ses.TagQueueID),
		Reason:     reason,
		Fault:      relay.FaultAddress,
		Suppressed: true,
	}
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
