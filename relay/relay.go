// Package relay is mailgate's core vocabulary, shared by submission, composition, the queue and the
// transports: the typed relay error, the queued message handed to a transport, and the outcome of a
// delivery attempt.
//
// Design: every failure that crosses a package boundary is (or wraps) an *Error. Its SMTP code decides
// what happens next — 4xx is temporary (retry, or 451 to a submitting client), 5xx is permanent (bounce,
// or a refusal) — so permanence travels with the error, never as a second return value. Errors that are
// not *Error (network failures, timeouts, bugs) are treated as temporary and their text is never shown
// to a submitting client: relay/submit converts errors to SMTP replies in exactly one place.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// EnhancedCode is an RFC 3463 enhanced status code written as "class.subject.detail", e.g. "5.7.1".
// A string type lets the codes below be constants.
type EnhancedCode string

// Parts splits the code into its three numbers (as go-smtp wants them); a malformed code gives ok=false.
func (c EnhancedCode) Parts() (parts [3]int, ok bool) {
	f := strings.Split(string(c), ".")
	if len(f) != 3 {
		return parts, false
	}
	for i, s := range f {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 999 {
			return parts, false
		}
		parts[i] = n
	}
	return parts, true
}

// Error is the one typed relay error. Msg is safe to show to a submitting client and to record in the
// bounce store; Err is the internal cause and is only logged.
type Error struct {
	Code     int          // SMTP reply code, e.g. 550
	Enhanced EnhancedCode // e.g. {5, 7, 1}
	Msg      string       // client-safe text
	// Reason is a short, fixed, low-cardinality word for metrics labels and logs ("policy", "size",
	// "tls_required", "upstream_auth", ...).
	Reason string
	// RetryAfter, when set on a temporary error, asks the queue not to retry before this long.
	RetryAfter time.Duration
	// Stage is the protocol step of a delivery attempt the failure happened in ("" outside delivery).
	// Classify reads a reply differently at MAIL, RCPT and the end of DATA.
	Stage Stage
	// Fault, when set, is the transport's own verdict for a failure that has no SMTP reply to read (an
	// OAuth token that cannot be had, an SES answer, Force TLS not met). Zero lets Classify decide
	// from Code, Enhanced and Stage.
	Fault Fault
	// Remedy is what an operator should do, for the alert and the log line (never shown to clients).
	Remedy string
	Err    error // internal cause; never sent to a client
}

// Error renders code, enhanced code and message; the cause is appended for logs.
func (e *Error) Error() string {
	s := fmt.Sprintf("%d %s %s", e.Code, e.Enhanced, e.Msg)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the internal cause.
func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether the failure is worth retrying (a 4xx code).
func (e *Error) Temporary() bool { return e.Code >= 400 && e.Code < 500 }

// Errorf builds an *Error with a formatted client-safe message.
func Errorf(code int, enhanced EnhancedCode, reason, format string, args ...any) *Error {
	return &Error{Code: code, Enhanced: enhanced, Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// Wrap builds an *Error around an internal cause.
func Wrap(err error, code int, enhanced EnhancedCode, reason, msg string) *Error {
	return &Error{Code: code, Enhanced: enhanced, Reason: reason, Msg: msg, Err: err}
}

// AsError returns the *Error in err's chain, if any.
func AsError(err error) (*Error, bool) {
	var re *Error
	if errors.As(err, &re) {
		return re, true
	}
	return nil, false
}

// IsPermanent reports whether err ends delivery for good, as Classify decides: the address, the
// message or an unmet Force TLS. Everything else (4xx, network errors, timeouts, unknown errors, and
// faults of mailgate's or the relay's setup) is retried until the queue lifetime runs out, because
// losing a customer's mail to a fault that is not theirs is worse than a late bounce.
func IsPermanent(err error) bool { return Classify(err).Bounces() }

// Message is one queued message as a transport sees it. The body is the final composed RFC 5322 message
// with CRLF line endings; Open may be called more than once (one read per attempt).
type Message struct {
	QueueID    string
	Channel    string   // channel name, for logs and metrics
	MailFrom   string   // envelope sender (RFC 5321 MAIL FROM), set by mailgate
	Recipients []string // envelope recipients still to deliver in this attempt
	MessageID  string   // the composed Message-ID, without angle brackets
	ForceTLS   bool     // the channel requires a verified TLS next hop
	Size       int64    // body size in bytes
	Open       func() (io.ReadCloser, error)
}

// Result is the outcome of one delivery attempt.
type Result struct {
	// Reply is the upstream's final answer on success (an SMTP reply line, or the SES MessageId), for
	// the delivery log and test-send.
	Reply string
	// Errs is aligned with Message.Recipients: a nil entry means that recipient was delivered.
	Errs []error
}

// Failed returns a Result in which every one of n recipients failed with err.
func Failed(n int, err error) Result {
	errs := make([]error, n)
	for i := range errs {
		errs[i] = err
	}
	return Result{Errs: errs}
}

// Transport delivers a message to its next hop. Implementations must honour ctx for every network step.
type Transport interface {
	Deliver(ctx context.Context, m *Message) Result
}

// Enhanced codes used across packages, named for what they mean (RFC 3463, RFC 5248).
const (
	CodeOK                 EnhancedCode = "2.0.0"
	CodeTempLocal          EnhancedCode = "4.3.0"  // local error in processing
	CodeTempStorage        EnhancedCode = "4.3.1"  // mail system full (insufficient system storage)
	CodeTempNetwork        EnhancedCode = "4.4.1"  // no answer from host
	CodeTempTimeout        EnhancedCode = "4.4.2"  // bad connection / timeout
	CodeTempAuth           EnhancedCode = "4.7.0"  // temporary authentication failure
	CodeTooBig             EnhancedCode = "5.3.4"  // message too big for system
	CodePolicy             EnhancedCode = "5.7.1"  // delivery not authorized
	CodeAuthRequired       EnhancedCode = "5.7.0"  // authentication required
	CodeBadCredentials     EnhancedCode = "5.7.8"  // authentication credentials invalid
	CodeEncryptionRequired EnhancedCode = "5.7.10" // encryption needed
	CodeMalformed          EnhancedCode = "5.6.0"  // other or undefined media error
	CodeBadMailbox         EnhancedCode = "5.1.1"  // bad destination mailbox address
	CodeBadSyntax          EnhancedCode = "5.5.2"  // syntax error
	CodeExpired            EnhancedCode = "5.4.7"  // delivery time expired
)

// Bounce is one recipient that will not receive a message: recorded in the store, where it also puts
// the address on the suppression list until an operator removes it.
type Bounce struct {
	Address    string
	Channel    string
	Time       time.Time
	Code       int          // SMTP code, e.g. 550
	Enhanced   EnhancedCode // e.g. "5.1.1"
	Diagnostic string       // the upstream's reply text or mailgate's reason
	MessageID  string
	Ticket     string
	QueueID    string
	// Reason is a short word for metrics: "upstream", "tls_required", "expired", "ses_bounce",
	// "ses_complaint", ...
	Reason string
	// Fault is whose fault the bounce is (Classify), and Suppressed whether it put the address on the
	// suppression list: only FaultAddress does. A bounce for the message, Force TLS or an expired
	// lifetime is recorded for the operator and leaves the address free.
	Fault      Fault
	Suppressed bool
}

// DeliveryRecord is one line of the delivery log: what happened to a queued message in its latest
// attempt. Operators search it by ticket (the seed's "title=" search) or queue id.
type DeliveryRecord struct {
	QueueID   string
	MessageID string
	Ticket    string
	Channel   string
	Principal string
	// Agent is the agent a service principal sent for (DESIGN §1), "" when the principal sent as itself.
	Agent      string
	Recipients []string
	Status     string // queued, delivered, deferred, bounced, partial
	Attempts   int
	LastReply  string
	Time       time.Time
	// States is where each recipient stands (the log keeps a row per recipient, so a mixed outcome
	// shows who got the message and who did not); empty in records written before it existed.
	States []RecipientState
}

// RecipientState is one recipient's line of the delivery log.
type RecipientState struct {
	Address  string
	Status   string // pending (queued or deferred), delivered, bounced
	Code     int    // the reply code of a bounce or deferral (0: none yet)
	Enhanced EnhancedCode
	Reply    string // the upstream's answer: delivery reply, bounce diagnostic or last deferral
	Time     time.Time
}

// Envelope is what the queue keeps beside a message body: where it goes, how, and on whose behalf.
type Envelope struct {
	Channel    string // channel name
	Transport  string // name of the transport that delivers it (a custom SMTP server, "ses", "outbox")
	MailFrom   string // envelope sender
	Recipients []string
	MessageID  string // composed Message-ID, without angle brackets
	Ticket     string
	Principal  string // login of the submitting agent or service principal
	Agent      string // the agent a service principal named (X-Mailgate-Agent), "" if none
	ForceTLS   bool
	Received   time.Time
}

// Draft is a message body being written into the spool. Commit makes it durable (file and directory
// fsynced) and returns its queue id; only then may submission answer 250. Abort discards it.
type Draft interface {
	io.Writer
	Commit(ctx context.Context, env Envelope) (queueID string, err error)
	Abort() error
}
