package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// Event is an SES notification carried in an SNS Notification's Message. SES publishes two shapes:
// identity notifications ("notificationType") and configuration-set event publishing ("eventType");
// both carry the same "bounce", "complaint", "deliveryDelay" and "mail" objects.
type Event struct {
	NotificationType string         `json:"notificationType"`
	EventType        string         `json:"eventType"`
	Bounce           *Bounce        `json:"bounce"`
	Complaint        *Complaint     `json:"complaint"`
	DeliveryDelay    *DeliveryDelay `json:"deliveryDelay"`
	Mail             Mail           `json:"mail"`
}

// Bounce is SES's bounce object. BounceType is Permanent, Transient or Undetermined.
type Bounce struct {
	BounceType        string      `json:"bounceType"`
	BounceSubType     string      `json:"bounceSubType"`
	BouncedRecipients []Recipient `json:"bouncedRecipients"`
	Timestamp         string      `json:"timestamp"`
	FeedbackID        string      `json:"feedbackId"`
}

// Complaint is SES's complaint object (a recipient marked the message as spam).
type Complaint struct {
	ComplainedRecipients  []Recipient `json:"complainedRecipients"`
	ComplaintFeedbackType string      `json:"complaintFeedbackType"`
	Timestamp             string      `json:"timestamp"`
	FeedbackID            string      `json:"feedbackId"`
}

// DeliveryDelay is SES's delivery delay object (configuration-set events only).
type DeliveryDelay struct {
	DelayType         string      `json:"delayType"`
	DelayedRecipients []Recipient `json:"delayedRecipients"`
	ExpirationTime    string      `json:"expirationTime"`
	Timestamp         string      `json:"timestamp"`
}

// Recipient is one address in a bounce, complaint or delay, with the remote MTA's verdict when known.
type Recipient struct {
	EmailAddress   string `json:"emailAddress"`
	Action         string `json:"action"`
	Status         string `json:"status"`         // enhanced status code, e.g. "5.1.1"
	DiagnosticCode string `json:"diagnosticCode"` // e.g. "smtp; 550 5.1.1 user unknown"
}

// Mail describes the original message: SES's MessageId, its headers and (with a configuration set) the
// message tags mailgate set when sending.
type Mail struct {
	MessageID     string              `json:"messageId"`
	Source        string              `json:"source"`
	Timestamp     string              `json:"timestamp"`
	Tags          map[string][]string `json:"tags"`
	Headers       []Header            `json:"headers"`
	CommonHeaders struct {
		MessageID string `json:"messageId"`
		Subject   string `json:"subject"`
	} `json:"commonHeaders"`
}

// Header is one header of the original message, as SES reports it.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Kind is the event's type whichever shape carried it: "Bounce", "Complaint", "DeliveryDelay",
// "Delivery", "Send", ...
func (e *Event) Kind() string {
	if e.EventType != "" {
		return e.EventType
	}
	return e.NotificationType
}

// ParseEvent decodes an SES notification and checks that the object its kind names is present.
func ParseEvent(b []byte) (*Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("ses event: %w", err)
	}
	switch e.Kind() {
	case "":
		return nil, errors.New("ses event: neither notificationType nor eventType")
	case "Bounce":
		if e.Bounce == nil {
			return nil, errors.New("ses event: Bounce without a bounce object")
		}
	case "Complaint":
		if e.Complaint == nil {
			return nil, errors.New("ses event: Complaint without a complaint object")
		}
	case "DeliveryDelay":
		if e.DeliveryDelay == nil {
			return nil, errors.New("ses event: DeliveryDelay without a deliveryDelay object")
		}
	}
	return &e, nil
}

// HeaderMessageID is the original Message-ID header without angle brackets (mailgate's composed id,
// which carries the ticket), from commonHeaders or the header list.
func (m *Mail) HeaderMessageID() string {
	id := m.CommonHeaders.MessageID
	if id == "" {
		for _, h := range m.Headers {
			if strings.EqualFold(h.Name, "Message-ID") {
				id = h.Value
				break
			}
		}
	}
	return strings.Trim(strings.TrimSpace(id), "<>")
}

// Tag returns the first value of a message tag ("" if absent).
func (m *Mail) Tag(name string) string {
	if v := m.Tags[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// bounceCodes derives the SMTP code and enhanced code of a permanently bounced recipient: from the
// remote MTA's status and diagnostic code when SES has them (RFC 3464 §2.3.4 Status, §2.3.6
// Diagnostic-Code), otherwise from SES's bounce subtype.
func bounceCodes(r Recipient, subType string) (int, relay.EnhancedCode) {
	code := 0
	var enhanced relay.EnhancedCode
	if c := relay.EnhancedCode(strings.TrimSpace(r.Status)); validPermanent(c) {
		enhanced = c
	}
	for _, f := range strings.FieldsFunc(r.DiagnosticCode, func(c rune) bool { return c == ' ' || c == ';' || c == '-' }) {
		if code == 0 && len(f) == 3 {
			if n, err := strconv.Atoi(f); err == nil && n >= 500 && n <= 599 {
				code = n
			}
		}
		if enhanced == "" && validPermanent(relay.EnhancedCode(f)) {
			enhanced = relay.EnhancedCode(f)
		}
	}
	if code == 0 {
		code = 550
	}
	if enhanced == "" {
		switch subType {
		case "NoEmail":
			enhanced = relay.CodeBadMailbox
		case "MessageTooLarge":
			enhanced = relay.CodeTooBig
		case "ContentRejected", "AttachmentRejected":
			enhanced = relay.CodeMalformed
		case "Suppressed", "OnAccountSuppressionList":
			enhanced = relay.CodePolicy
		default:
			enhanced = "5.0.0"
		}
	}
	return code, enhanced
}

func validPermanent(c relay.EnhancedCode) bool {
	p, ok := c.Parts()
	return ok && p[0] == 5
}

// parseTime reads an SES timestamp (RFC 3339 with milliseconds), falling back to fallback.
func parseTime(s string, fallback time.Time) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t
	}
	return fallback
}
