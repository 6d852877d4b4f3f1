package smtp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/relay"
)

// Reasons carried by the *relay.Error values of this package (low-cardinality words for metrics).
const (
	ReasonUpstream     = "upstream"              // the upstream's own reply, passed through
	ReasonNetwork      = "upstream_network"      // connect failure, dropped connection, timeout
	ReasonTLSRequired  = "tls_required"          // Force TLS could not be satisfied: bounce at once
	ReasonUpstreamAuth = "upstream_auth"         // the relay's credentials or upstream config: defer, alert
	ReasonThrottled    = "upstream_throttled"    // 432 4.3.2 and friends: retry later
	ReasonQuota        = "upstream_quota"        // 554 5.2.0 quota exceeded: server paused
	ReasonTenantLimit  = "upstream_tenant_limit" // 550 5.7.233 the tenant's external recipient limit: defer, alert
	ReasonRateLimited  = "rate_limited"          // mailgate's own shaping deferred the message
	ReasonSize         = "size"                  // message larger than the configured or advertised limit
	ReasonLocal        = "local"                 // the spooled message could not be read
)

// replyError maps an upstream reply into a *relay.Error that keeps its code, enhanced code and text
// (the bounce diagnostic) and the stage it came at; relay.Classify decides from those whose fault it
// is. Two dialects are translated here, because only this transport knows them: Exchange Online's
// "554 5.2.0 ... SubmissionQuotaExceeded" is a temporary pause of the whole mailbox, and 432 4.3.2 is
// its connection throttling. Replies about the relay's own account (AUTH, send-as, SMTP AUTH disabled)
// get Reason upstream_auth, so the log and the alert carry the right remedy.
func (t *Transport) replyError(se *gosmtp.SMTPError, st relay.Stage) *relay.Error {
	enh := enhancedOf(se)
	text := oneLine(se.Message)
	if text == "" {
		text = "(no text in the upstream's reply)"
	}
	upstream := fmt.Sprintf("%d %s %s", se.Code, enh, text)
	// No Err: the reply is all in Code, Enhanced and Msg, and logging go-smtp's error beside it would
	// print the same reply twice ("451 4.3.0 try later: SMTP error 451: try later").
	re := &relay.Error{Code: se.Code, Enhanced: enh, Stage: st, Reason: ReasonUpstream, Msg: text}
	switch {
	case se.Code < 400 || se.Code > 599:
		// A reply outside 4xx/5xx where a failure was reported (a protocol violation), at any stage —
		// AUTH included: retry.
		re.Code, re.Enhanced = 451, relay.CodeTempLocal
		re.Msg = fmt.Sprintf("unexpected reply from upstream %s: %s", t.o.Name, upstream)
	case quotaReply(se, enh):
		re.Code, re.Enhanced, re.Reason = 451, "4.2.0", ReasonQuota
		re.Msg = fmt.Sprintf("upstream %s sending quota exceeded (%s); mail deferred", t.o.Name, upstream)
	case enh == "5.7.233":
		re.Reason = ReasonTenantLimit
	case se.Code == 432 || enh == "4.3.2":
		re.Reason, re.RetryAfter = ReasonThrottled, t.o.ThrottleRetryAfter
	case st == relay.StageAuth || authConfigReply(se, enh):
		re.Reason = ReasonUpstreamAuth
		re.Msg = fmt.Sprintf("upstream %s refused the relay's authentication or sender (%s)", t.o.Name, upstream)
	}
	re.Remedy = t.remedy(re) // for the queue's alert and /readyz
	return re
}

// authConfigReply recognises replies, outside AUTH itself, that say the relay is not allowed to send:
// 530 (authentication required, RFC 4954 §6), 535, and Exchange Online's 5.7.57 (client not
// authenticated), 5.7.60 (no Send As permission for the sender), 5.7.139 (SMTP AUTH disabled) and
// 5.7.3 on a 535. It only picks the remedy: relay.Classify makes them setup faults.
func authConfigReply(se *gosmtp.SMTPError, enh relay.EnhancedCode) bool {
	switch {
	case se.Code == 530 || se.Code == 535:
		return true
	case enh == "5.7.57" || enh == "5.7.60" || enh == "5.7.139":
		return true
	}
	return false
}

// quotaReply recognises Exchange Online's "554 5.2.0 STOREDRV.Submission.Exception:
// SubmissionQuotaExceededException" (and other 5.2.0 quota replies): the mailbox has used its sending
// quota, so every message to this server will fail until the window frees up.
func quotaReply(se *gosmtp.SMTPError, enh relay.EnhancedCode) bool {
	return enh == "5.2.0" && strings.Contains(strings.ToLower(se.Message), "quota")
}

// enhancedOf returns the reply's enhanced code, or class.0.0 when the server sent none (RFC 3463 §3).
func enhancedOf(se *gosmtp.SMTPError) relay.EnhancedCode {
	e := se.EnhancedCode
	if e != gosmtp.NoEnhancedCode && e[0] > 0 {
		return relay.EnhancedCode(fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2]))
	}
	class := se.Code / 100
	if class != 4 && class != 5 {
		class = 4
	}
	return relay.EnhancedCode(fmt.Sprintf("%d.0.0", class))
}

// classify turns any error from one protocol step into a *relay.Error: an upstream reply through
// replyError, anything else (connection refused, reset, timeout) as a temporary network failure.
func (t *Transport) classify(err error, st relay.Stage) *relay.Error {
	if re, ok := relay.AsError(err); ok {
		return re
	}
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		return t.replyError(se, st)
	}
	re := &relay.Error{Code: 451, Enhanced: relay.CodeTempTimeout, Stage: st, Reason: ReasonNetwork, Err: err,
		Msg: fmt.Sprintf("connection to upstream %s failed during %s", t.o.Name, st)}
	switch {
	case st == relay.StageConnect:
		re.Enhanced, re.Msg = relay.CodeTempNetwork, fmt.Sprintf("cannot connect to upstream %s", t.o.Name)
	case isTimeout(err):
		re.Msg = fmt.Sprintf("timeout talking to upstream %s during %s", t.o.Name, st)
	}
	return re
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isTransientNetwork reports whether a TLS handshake failure is a network hiccup (worth a retry) rather
// than a refusal or a certificate problem (which Force TLS turns into a bounce).
func isTransientNetwork(err error) bool {
	if isTimeout(err) {
		return true
	}
	var ve x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	var cv *tls.CertificateVerificationError
	if errors.As(err, &ve) || errors.As(err, &he) || errors.As(err, &ci) || errors.As(err, &cv) {
		return false
	}
	var oe *net.OpError
	return errors.As(err, &oe) && !errors.As(err, new(tls.AlertError))
}

// tlsRequired is the permanent error for a message whose channel requires TLS when the next hop cannot
// give a verified TLS ≥ 1.2 session: nothing was sent, and the queue bounces the recipients at once.
func (t *Transport) tlsRequired(what string, cause error) *relay.Error {
	return &relay.Error{Code: 554, Enhanced: relay.CodeEncryptionRequired, Reason: ReasonTLSRequired,
		Stage: relay.StageTLS, Fault: relay.FaultTLS,
		Msg: fmt.Sprintf("TLS required by the channel but upstream %s: %s; message not sent", t.o.Name, what), Err: cause}
}

// authError is the error for a failure of the relay's own authentication that has no upstream reply to
// classify (no token, no TLS for credentials, no usable mechanism): a setup fault, deferred and
// alerted. A customer's address is never bounced because mailgate's credentials are wrong.
func (t *Transport) authError(msg string, cause error) *relay.Error {
	re := &relay.Error{Code: 451, Enhanced: relay.CodeTempAuth, Reason: ReasonUpstreamAuth,
		Stage: relay.StageAuth, Fault: relay.FaultSetup,
		Msg: fmt.Sprintf("upstream %s: %s; mail deferred", t.o.Name, msg), Err: cause}
	if inner, ok := relay.AsError(cause); ok && inner.Remedy != "" {
		re.Remedy = inner.Remedy // the token source's (auth/oauth's) remedy
	} else {
		re.Remedy = t.remedy(re)
	}
	return re
}

// remedy returns the operator action for a relay error, for the warn log line.
func (t *Transport) remedy(re *relay.Error) string {
	enh := re.Enhanced
	switch {
	case enh == "5.7.139":
		return "SMTP AUTH is disabled for the mailbox or tenant: enable it with Set-CASMailbox -Identity " +
			t.mailboxOrUser() + " -SmtpClientAuthenticationDisabled $false (tenant-wide: Set-TransportConfig " +
			"-SmtpClientAuthenticationDisabled $false; Security Defaults turn it off too), or send through a graph_servers mailbox"
	case enh == "5.7.30":
		return "Exchange Online does not accept basic authentication (a password) for SMTP: set server " + t.o.Name +
			" to auth: microsoft-oauth (client_credentials with the SMTP.SendAsApp application permission, or " +
			"authorization_code with SMTP.Send), or send through a graph_servers mailbox"
	case enh == "5.7.233":
		return "the tenant reached its external recipient rate limit (TERRL): Exchange Online refuses external recipients " +
			"for up to 24 hours; mail is deferred, not bounced. Lower recipients_per_day for server " + t.o.Name +
			" or spread the load over more mailboxes or tenants"
	case enh == "5.7.3" && t.o.Auth == AuthXOAUTH2:
		return "Exchange Online refused the OAuth token for " + t.mailboxOrUser() + ": it must be issued for " +
			"https://outlook.office365.com (scope https://outlook.office365.com/.default with SMTP.SendAsApp, or delegated " +
			"SMTP.Send); a Microsoft Graph token (Mail.Send, audience https://graph.microsoft.com) is refused on SMTP — " +
			"use a graph_servers mailbox for it. For the app permission, also register the service principal " +
			"(New-ServicePrincipal) and grant it the mailbox (Add-MailboxPermission -User SERVICE_PRINCIPAL_ID -AccessRights FullAccess)"
	case enh == "5.7.57":
		return "the upstream requires authentication: configure auth for server " + t.o.Name
	case enh == "5.7.60":
		return "grant " + t.mailboxOrUser() + " Send As permission for the envelope sender, or set the channel's MAIL FROM to that mailbox"
	case re.Reason == ReasonUpstreamAuth && t.o.Auth == AuthXOAUTH2:
		return "check the app registration's SMTP.Send permission and admin consent, that the service principal " +
			"has access to the mailbox (Add-MailboxPermission), and `mailgate oauth status` for token errors"
	case re.Reason == ReasonUpstreamAuth:
		return "check the username/password (or the TLS set-up) configured for server " + t.o.Name
	case re.Reason == ReasonQuota:
		return "the mailbox's sending quota is used up; mail to this server is held until the window frees"
	case re.Reason == ReasonThrottled:
		return "the upstream limits concurrent connections: lower max_connections for server " + t.o.Name
	case re.Reason == ReasonTLSRequired:
		return "the upstream must offer STARTTLS with a certificate valid for " + t.o.TLSServerName + " (or the channel must not force TLS)"
	case re.Reason == ReasonNetwork:
		return "check that " + t.addr + " is reachable from this host"
	case re.Stage == relay.StageMail:
		return "upstream " + t.o.Name + " refuses the envelope sender: check the channel's mail_from and that " +
			t.mailboxOrUser() + " may send as it"
	case re.Stage == relay.StageRcpt:
		return "upstream " + t.o.Name + " refuses to relay for mailgate's account (relay access denied): allow " +
			t.mailboxOrUser() + " to relay to external recipients"
	case relay.Classify(re) == relay.FaultSetup:
		return "upstream " + t.o.Name + " refused mailgate's commands; see its logs for why"
	}
	return ""
}

func (t *Transport) mailboxOrUser() string {
	if t.o.Mailbox != "" {
		return t.o.Mailbox
	}
	return t.o.Username
}

// oneLine joins a multi-line reply text for a single-line diagnostic.
func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", " ") }
