package ses

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/service/sesv2/types"
	"github.com/aws/smithy-go"

	"github.com/mailgate/mailgate/relay"
)

// Enhanced codes for SES answers that relay has no constant for (RFC 3463 §3).
const (
	codeCongestion   relay.EnhancedCode = "4.4.5"  // X.4.5 mail system congestion: throttling, quotas
	codeNotAccepting relay.EnhancedCode = "4.3.2"  // X.3.2 system not accepting network messages: paused, suspended
	codeUpstream     relay.EnhancedCode = "4.4.0"  // X.4.0 other network or routing status: SES 5xx
	codeTLSPolicy    relay.EnhancedCode = "4.7.10" // X.7.10 encryption needed (RFC 5248), deferred
	codeIdentity     relay.EnhancedCode = "4.7.1"  // X.7.1 delivery not authorized: the sending identity
)

// Reasons (relay.Error.Reason) this transport produces: short fixed words for metrics and logs.
const (
	ReasonThrottled        = "ses_throttled"
	ReasonSendingPaused    = "ses_sending_paused"
	ReasonAccountSuspended = "ses_account_suspended"
	ReasonUnavailable      = "ses_unavailable"
	ReasonRejected         = "ses_rejected"
	ReasonMailFrom         = "ses_mail_from_not_verified"
	ReasonIdentity         = "ses_identity_not_verified"
	ReasonBadRequest       = "ses_bad_request"
	ReasonAuth             = "upstream_auth"
	ReasonNotFound         = "ses_not_found"
	ReasonSize             = "size"
	ReasonError            = "ses_error"
	ReasonNetwork          = "network"
	ReasonTimeout          = "timeout"
)

// maxDiagnostic bounds the SES text kept in an error and a bounce record.
const maxDiagnostic = 300

// classify maps an error from SendEmail to a *relay.Error. SES answers are not SMTP replies, so each
// one states its relay.Fault (DESIGN §4) explicitly; relay.Classify then honours it. The SES table:
//
//	throttling, TooManyRequests, LimitExceeded, HTTP 429  → 451 4.4.5 temporary (retried by the queue)
//	any HTTP 5xx (InternalServiceError, 503, ...)         → 451 4.4.0 temporary
//	SendingPaused                                         → 451 4.3.2 setup (deferred; alert)
//	AccountSuspended                                      → 451 4.3.2 setup (deferred, never bounced; alert)
//	MessageRejected: identity/address "not verified",
//	  not authorized, sandbox                             → 451 4.7.1 setup (deferred; alert)
//	MessageRejected, any other text (content, virus)      → 554 5.7.1 message (bounce, not suppressed)
//	MailFromDomainNotVerified                             → 451 4.7.1 setup (deferred; alert)
//	BadRequest                                            → 554 5.6.0 message (bounce, not suppressed)
//	HTTP 413 (request too large)                          → 552 5.3.4 message (bounce, not suppressed)
//	403 / signature / token errors, no credentials        → 451 4.7.0 setup (deferred; alert: credentials)
//	NotFound (e.g. configuration set)                     → 451 4.3.0 setup (deferred; alert: configuration)
//	anything else, network errors, timeouts               → 451 temporary (retried)
//
// SES never refuses a recipient at send time for being a bad address: an address fault only ever comes
// back as a bounce event (the events package), which is the one SES source of suppression. Unknown
// answers are temporary: a late bounce after the queue lifetime is better than losing a customer's mail
// to an answer mailgate did not understand.
func classify(err error) *relay.Error {
	if re, ok := relay.AsError(err); ok {
		return re
	}
	var credErr *credentialsError
	if errors.As(err, &credErr) {
		return setup(relay.Wrap(err, 451, relay.CodeTempAuth, ReasonAuth, "no usable AWS credentials for SES"))
	}
	status := httpStatus(err)
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) {
		switch {
		case status == 413:
			return relay.Wrap(err, 552, relay.CodeTooBig, ReasonSize, "SES refused the message as too large")
		case status >= 500:
			return relay.Wrap(err, 451, codeUpstream, ReasonUnavailable, fmt.Sprintf("SES answered HTTP %d", status))
		case errors.Is(err, context.DeadlineExceeded):
			return relay.Wrap(err, 451, relay.CodeTempTimeout, ReasonTimeout, "SES did not answer in time")
		case errors.Is(err, context.Canceled):
			return relay.Wrap(err, 451, relay.CodeTempTimeout, ReasonTimeout, "SES request cancelled")
		case status != 0:
			return relay.Wrap(err, 451, relay.CodeTempLocal, ReasonError, fmt.Sprintf("SES answered HTTP %d", status))
		}
		return relay.Wrap(err, 451, relay.CodeTempNetwork, ReasonNetwork, "SES is unreachable")
	}

	code := apiErr.ErrorCode()
	diag := diagnostic(code, apiErr.ErrorMessage())
	var (
		rejected  *types.MessageRejected
		mailFrom  *types.MailFromDomainNotVerifiedException
		badReq    *types.BadRequestException
		suspended *types.AccountSuspendedException
		paused    *types.SendingPausedException
		tooMany   *types.TooManyRequestsException
		limit     *types.LimitExceededException
		notFound  *types.NotFoundException
	)
	switch {
	case errors.As(err, &suspended) || code == "AccountSuspendedException":
		return setup(relay.Wrap(err, 451, codeNotAccepting, ReasonAccountSuspended, diag))
	case errors.As(err, &paused) || code == "SendingPausedException":
		return setup(relay.Wrap(err, 451, codeNotAccepting, ReasonSendingPaused, diag))
	case errors.As(err, &tooMany), errors.As(err, &limit), status == 429, isThrottleCode(code):
		return relay.Wrap(err, 451, codeCongestion, ReasonThrottled, diag)
	case status == 413:
		return message(relay.Wrap(err, 552, relay.CodeTooBig, ReasonSize, diag))
	case status >= 500:
		return relay.Wrap(err, 451, codeUpstream, ReasonUnavailable, diag)
	case (errors.As(err, &rejected) || code == "MessageRejected") && identityProblem(apiErr.ErrorMessage()):
		return setup(relay.Wrap(err, 451, codeIdentity, ReasonIdentity, diag))
	case errors.As(err, &rejected) || code == "MessageRejected":
		return message(relay.Wrap(err, 554, relay.CodePolicy, ReasonRejected, diag))
	case errors.As(err, &mailFrom) || code == "MailFromDomainNotVerifiedException":
		return setup(relay.Wrap(err, 451, codeIdentity, ReasonMailFrom, diag))
	case errors.As(err, &badReq) || code == "BadRequestException":
		return message(relay.Wrap(err, 554, relay.CodeMalformed, ReasonBadRequest, diag))
	case status == 401 || status == 403 || isAuthCode(code):
		return setup(relay.Wrap(err, 451, relay.CodeTempAuth, ReasonAuth, diag))
	case errors.As(err, &notFound) || code == "NotFoundException":
		return setup(relay.Wrap(err, 451, relay.CodeTempLocal, ReasonNotFound, diag))
	}
	return relay.Wrap(err, 451, relay.CodeTempLocal, ReasonError, diag)
}

// setup marks an SES answer as a setup fault (deferred, alerted) with the operator's remedy.
func setup(re *relay.Error) *relay.Error {
	re.Fault = relay.FaultSetup
	re.Remedy = remedy(re.Reason)
	return re
}

// remedy is what an operator does about a setup fault, for the alert and /readyz.
func remedy(reason string) string {
	switch reason {
	case ReasonAuth:
		return "check the AWS credentials mailgate uses for SES and that they allow ses:SendEmail"
	case ReasonSendingPaused:
		return "sending is paused for the SES account or configuration set: see the SES console's account dashboard"
	case ReasonAccountSuspended:
		return "the SES account is suspended: see the SES console's account dashboard and AWS support"
	case ReasonIdentity:
		return "verify the channel's From address or domain in SES (and request production access if the account is in the sandbox)"
	case ReasonMailFrom:
		return "publish the custom MAIL FROM domain's MX and SPF records so SES verifies it, or remove the custom MAIL FROM domain"
	case ReasonNotFound:
		return "create the channel's configuration set in SES, or correct the channel's ses_configuration_set"
	case "tls_policy":
		return "set the configuration set's TLS policy to REQUIRE (aws sesv2 put-configuration-set-delivery-options --tls-policy REQUIRE)"
	}
	return ""
}

func message(re *relay.Error) *relay.Error {
	re.Fault = relay.FaultMessage
	return re
}

// identityProblem recognises a MessageRejected that is about the account, not the message: "Email
// address is not verified. The following identities failed the check ..." (an unverified sender, or
// any recipient while the account is in the sandbox), "not authorized to send from".
func identityProblem(msg string) bool {
	m := strings.ToLower(msg)
	for _, s := range []string{"not verified", "not authorized", "sandbox", "identit"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

func isThrottleCode(code string) bool {
	switch code {
	case "Throttling", "ThrottlingException", "TooManyRequestsException", "LimitExceededException",
		"RequestLimitExceeded", "SlowDown":
		return true
	}
	return false
}

func isAuthCode(code string) bool {
	switch code {
	case "AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "InvalidClientTokenId",
		"InvalidSignatureException", "SignatureDoesNotMatch", "ExpiredTokenException", "ExpiredToken",
		"MissingAuthenticationTokenException", "IncompleteSignature":
		return true
	}
	return false
}

// httpStatus digs the HTTP status out of an SDK error (smithy's *http.ResponseError), 0 if none.
func httpStatus(err error) int {
	var withStatus interface{ HTTPStatusCode() int }
	if errors.As(err, &withStatus) {
		return withStatus.HTTPStatusCode()
	}
	return 0
}

// diagnostic is the client-safe text of an SES answer: "SES <code>: <message>", control characters
// removed and length bounded, as it is stored in the bounce record and shown by test-send.
func diagnostic(code, msg string) string {
	msg = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, strings.TrimSpace(msg))
	s := "SES " + strings.TrimSuffix(code, "Exception")
	if msg != "" {
		s += ": " + msg
	}
	if len(s) > maxDiagnostic {
		s = strings.ToValidUTF8(s[:maxDiagnostic], "") + "..."
	}
	return s
}
