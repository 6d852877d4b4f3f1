package relay

import "strings"

// Fault says whose fault a failed delivery is, and so what follows (DESIGN §4, "Whose fault, and what
// follows"). It is decided once, by Classify, for every transport: the transports report what happened
// (the upstream's reply, the protocol stage, or an explicit Fault where there is no SMTP reply to read),
// and the queue acts on the Fault alone.
type Fault int

const (
	// FaultNone: delivered.
	FaultNone Fault = iota
	// FaultTemporary: 4xx, network, timeouts, throttling. Retried with backoff until max_lifetime, then
	// bounced 5.4.7 without suppression.
	FaultTemporary
	// FaultSetup: mailgate's or the relay's configuration (envelope sender refused, relay access denied,
	// upstream AUTH/OAuth, SES identity or account). Deferred like a temporary failure, raised as an
	// alert with its remedy; never a bounce of the customer's address while it lasts.
	FaultSetup
	// FaultMessage: the message itself (size, content, policy at end of DATA, attachments). Bounced at
	// once; the address is not suppressed: the next message to it may well be fine.
	FaultMessage
	// FaultTLS: the channel requires TLS and the next hop cannot give it. Bounced at once (the seed says
	// so), not suppressed, and alerted: it is the relay's problem, but retrying cannot fix it.
	FaultTLS
	// FaultAddress: the address itself is the problem (no such mailbox, disabled, bad domain, SES
	// permanent bounce, complaint). Bounced and put on the suppression list.
	FaultAddress
)

var faultNames = [...]string{"none", "temporary", "setup", "message", "tls", "address"}

// String is the fault's fixed, low-cardinality name (metrics labels, logs, the bounce record).
func (f Fault) String() string {
	if f < 0 || int(f) >= len(faultNames) {
		return "unknown"
	}
	return faultNames[f]
}

// FaultFromString is the inverse of String, for faults stored by name; an unknown name is
// FaultTemporary, which neither bounces nor suppresses.
func FaultFromString(name string) Fault {
	for i, n := range faultNames {
		if n == name {
			return Fault(i)
		}
	}
	return FaultTemporary
}

// Bounces reports whether the fault ends delivery to the recipient now.
func (f Fault) Bounces() bool { return f == FaultMessage || f == FaultTLS || f == FaultAddress }

// Suppresses reports whether the recipient's address goes on the suppression list.
func (f Fault) Suppresses() bool { return f == FaultAddress }

// Alerts reports whether an operator must act: the queue raises it in /readyz and a metric.
func (f Fault) Alerts() bool { return f == FaultSetup || f == FaultTLS }

// Stage is the step of a delivery attempt a failure happened in. The same reply means different things
// at different steps: 550 5.7.1 at MAIL is the relay refusing mailgate's envelope sender (setup), at
// the end of DATA it is a content refusal (the message).
type Stage string

// Stages of an SMTP transaction (RFC 5321 §3.3) plus the non-SMTP ones.
const (
	StageConnect Stage = "connect" // TCP, greeting, EHLO
	StageTLS     Stage = "tls"
	StageAuth    Stage = "auth"
	StageMail    Stage = "mail"
	StageRcpt    Stage = "rcpt"
	StageData    Stage = "data" // the DATA command and the reply after the final dot
	StageLocal   Stage = "local"
)

// Classify decides whose fault err is. It is the one place that does: the queue, test-send and the
// tests all ask it. nil is FaultNone; an error that is not an *Error (network, timeout, bug) is
// temporary; an *Error with an explicit Fault keeps it; otherwise the reply code, enhanced code and
// stage decide, by these rules (first match wins):
//
//	4xx at any stage                                          temporary
//	5.7.10 / tls_required                                      tls
//	530, 535, 5.7.0, 5.7.3, 5.7.8, 5.7.30, 5.7.57, 5.7.60,
//	  5.7.139, 5.7.233, 5.7.708, 5.7.750 (authentication,
//	  send-as, tenant limits and IP blocks), 5.5.x and 500–504/555 with no
//	  specific enhanced code (protocol)                       setup
//	5xx at connect, tls or auth                               setup
//	5.3.4 or 552 at MAIL                                      message
//	5xx at MAIL (sender refused)                              setup
//	5.1.1, 5.1.2, 5.1.3, 5.1.6, 5.1.10, 5.2.1 at RCPT          address
//	5.7.x at RCPT (relay access denied), 5.1.7, 5.1.8          setup
//	any other 5xx (end of DATA, other RCPT refusals)          message
//
// An address is suppressed only on positive evidence that it is the problem: an RCPT refusal with an
// address status code. A plain "550" with no enhanced code, or 5.1.1 after the final dot (where one
// reply covers every recipient), bounces without suppressing.
func Classify(err error) Fault {
	if err == nil {
		return FaultNone
	}
	re, ok := AsError(err)
	if !ok {
		return FaultTemporary
	}
	if re.Fault != FaultNone {
		return re.Fault
	}
	if re.Code < 500 || re.Code > 599 {
		return FaultTemporary
	}
	enh := re.Enhanced
	subject := enhancedSubject(enh)
	switch {
	case enh == CodeEncryptionRequired:
		return FaultTLS
	case setupReply(re.Code, enh, subject):
		return FaultSetup
	case re.Stage == StageConnect || re.Stage == StageTLS || re.Stage == StageAuth:
		return FaultSetup
	case re.Stage == StageMail && (enh == CodeTooBig || re.Code == 552):
		return FaultMessage
	case re.Stage == StageMail:
		return FaultSetup
	case re.Stage == StageRcpt && addressStatus(enh):
		return FaultAddress
	case re.Stage == StageRcpt && (subject == "7" || enh == "5.1.7" || enh == "5.1.8"):
		return FaultSetup
	}
	return FaultMessage
}

// setupReply recognises replies that are about the relay's account, permissions or protocol, wherever
// they come: authentication (530, 535), the protocol (500–504 and 555 when the enhanced code says
// nothing more specific, or any 5.5.x: a confused client or relay, e.g. 503 "nested MAIL command"),
// and Exchange Online's account codes, which it also gives after the final dot (5.7.60 no Send As,
// 5.7.233 the tenant's external recipient rate limit, 5.7.708/5.7.750 tenant or IP blocked).
func setupReply(code int, enh EnhancedCode, subject string) bool {
	switch code {
	case 530, 535:
		return true
	case 500, 501, 502, 503, 504, 555:
		if enh == "5.0.0" {
			return true
		}
	}
	switch enh {
	case "5.7.0", "5.7.3", "5.7.8", "5.7.30", "5.7.57", "5.7.60", "5.7.139", "5.7.233", "5.7.708", "5.7.750":
		// 5.7.233: the tenant's external-recipient rate limit, a quota of the account however the
		// reply is worded (550): the mail waits, the customer did nothing.
		return true
	}
	return subject == "5"
}

// addressStatus reports enhanced codes that say the recipient address itself is bad (RFC 3463 §3.2,
// RFC 7505 for 5.1.10): bad mailbox, bad system, bad syntax, moved, null MX, disabled mailbox.
func addressStatus(enh EnhancedCode) bool {
	switch enh {
	case "5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1":
		return true
	}
	return false
}

// enhancedSubject is the subject of an enhanced code ("7" for 5.7.1), "" when malformed.
func enhancedSubject(enh EnhancedCode) string {
	f := strings.SplitN(string(enh), ".", 3)
	if len(f) != 3 {
		return ""
	}
	return f[1]
}
