package graph

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// Reasons (relay.Error.Reason) this transport produces: short fixed words for metrics and logs.
const (
	ReasonThrottled   = "graph_throttled"
	ReasonUnavailable = "graph_unavailable"
	ReasonQuota       = "graph_quota"
	ReasonAuth        = "upstream_auth"
	ReasonAccess      = "graph_access_denied"
	ReasonMailbox     = "graph_mailbox"
	ReasonRejected    = "graph_rejected"
	ReasonSize        = "size"
	ReasonBadRequest  = "graph_bad_request"
	ReasonNetwork     = "network"
	ReasonRateLimited = "rate_limited"
	ReasonLocal       = "local"
)

// maxDiagnostic bounds the Graph text kept in an error and a bounce record.
const maxDiagnostic = 300

// apiError is one answer from Graph that is not a success: its status, the error code and message
// of its JSON body ({"error": {"code", "message"}}), its request-id (what Microsoft support asks for)
// and Retry-After.
type apiError struct {
	Status     int
	Code       string
	Message    string
	RequestID  string
	RetryAfter time.Duration
	Step       string // which request: sendMail, createDraft, attach, uploadSession, upload, send
}

func (e *apiError) Error() string {
	s := fmt.Sprintf("graph %s: HTTP %d", e.Step, e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.RequestID != "" {
		s += " (request-id " + e.RequestID + ")"
	}
	return s
}

// readAPIError reads a failed response's body (bounded) into an apiError.
func readAPIError(resp *http.Response, step string) *apiError {
	e := &apiError{Status: resp.StatusCode, Step: step, RequestID: resp.Header.Get("request-id"),
		RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	var body struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(raw, &body) == nil {
		e.Code, e.Message = body.Error.Code, clip(oneLine(body.Error.Message))
	}
	return e
}

// maxRetryAfter caps a Retry-After in seconds (a day): a larger one is a mistake, and would overflow.
const maxRetryAfter = 24 * 60 * 60

// parseRetryAfter reads Retry-After as seconds or an HTTP date (RFC 9110 §10.2.3); 0 when absent.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n >= 0 {
		return time.Duration(min(n, maxRetryAfter)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// classify turns a Graph answer (or a failure to get one) into a *relay.Error that states its
// relay.Fault, by DESIGN §4's table (Graph answers are not SMTP replies, so Classify cannot read them):
//
//	429, 503, 504, other 5xx (Retry-After honoured)          451 4.4.5 / 4.4.0  temporary
//	quota answers (…QuotaExceeded…)                         451 4.2.0          temporary, mailbox paused
//	401 (after one retry with a fresh token)                451 4.7.0          setup: the token
//	403 ErrorAccessDenied, other 403                        451 4.7.0          setup: permission, access policy
//	403 ErrorSendAsDenied                                   451 4.7.0          setup: Send As right
//	404 / MailboxNotEnabledForRESTAPI, ErrorInvalidUser    451 4.7.0          setup: the mailbox
//	413, ErrorMessageSizeExceeded                           552 5.3.4          message (bounce, not suppressed)
//	400 MIME content errors, ErrorInvalidRecipients         554 5.6.0          message (bounce, not suppressed)
//	any other 4xx                                           451 4.3.0          setup (deferred; alert)
//	network errors, timeouts                                451 4.4.1 / 4.4.2  temporary
//
// Graph never refuses one recipient of a message: every recipient shares the outcome, and an address
// fault only comes back later as a non-delivery report to the mailbox, which mailgate does not read.
// Unknown 4xx answers defer with an alert rather than bounce: they are more likely mailgate's request
// or the tenant's setup than the customer's message.
func (t *Transport) classify(err error) *relay.Error {
	if re, ok := relay.AsError(err); ok {
		return re
	}
	var ae *apiError
	if !errors.As(err, &ae) {
		re := &relay.Error{Code: 451, Enhanced: relay.CodeTempNetwork, Reason: ReasonNetwork, Fault: relay.FaultTemporary, Err: err,
			Msg: fmt.Sprintf("cannot reach Microsoft Graph for %s", t.o.Name)}
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			re.Enhanced, re.Msg = relay.CodeTempTimeout, fmt.Sprintf("timeout talking to Microsoft Graph for %s", t.o.Name)
		}
		re.Remedy = "check that " + t.host + " is reachable over HTTPS from this host (DNS, firewall, proxy)"
		return re
	}
	graph := ae.Error()
	mbox := t.o.Mailbox
	setup := func(reason, remedy string) *relay.Error {
		return &relay.Error{Code: 451, Enhanced: relay.CodeTempAuth, Reason: reason, Fault: relay.FaultSetup, Stage: relay.StageAuth,
			Err: ae, Remedy: remedy, Msg: fmt.Sprintf("Microsoft Graph refused mailbox %s (%s); mail deferred", mbox, graph)}
	}
	code := strings.ToLower(ae.Code)
	switch {
	case strings.Contains(code, "quotaexceeded") || strings.Contains(strings.ToLower(ae.Message), "submission quota"):
		return &relay.Error{Code: 451, Enhanced: "4.2.0", Reason: ReasonQuota, Fault: relay.FaultTemporary, Err: ae,
			Remedy: "the mailbox's sending quota is used up; mail to " + t.o.Name + " is held until the window frees",
			Msg:    fmt.Sprintf("mailbox %s sending quota exceeded (%s); mail deferred", mbox, graph)}
	case ae.Status == http.StatusTooManyRequests || ae.Status == http.StatusServiceUnavailable || ae.Status == http.StatusGatewayTimeout:
		wait := ae.RetryAfter
		if wait <= 0 {
			wait = t.o.ThrottleRetryAfter
		}
		return &relay.Error{Code: 451, Enhanced: "4.4.5", Reason: ReasonThrottled, Fault: relay.FaultTemporary, RetryAfter: wait, Err: ae,
			Msg: fmt.Sprintf("Microsoft Graph throttled mailbox %s (%s); retry after %s", mbox, graph, wait.Round(time.Second))}
	case ae.Status >= 500:
		return &relay.Error{Code: 451, Enhanced: "4.4.0", Reason: ReasonUnavailable, Fault: relay.FaultTemporary, RetryAfter: ae.RetryAfter, Err: ae,
			Msg: fmt.Sprintf("Microsoft Graph failed for mailbox %s (%s)", mbox, graph)}
	case ae.Status == http.StatusUnauthorized:
		return setup(ReasonAuth, "Graph refused the access token: it must be issued for "+Audience+
			" (client credentials scope "+Audience+"/.default, application permission Mail.Send with admin consent; "+
			"delegated: Mail.Send offline_access); a token for outlook.office365.com is for SMTP AUTH only. Check the tenant, "+
			"client_id and this host's clock")
	case code == "mailboxnotenabledforrestapi" || code == "mailboxnotsupportedforrestapi":
		return setup(ReasonMailbox, "mailbox "+mbox+" cannot use Graph: it must be an Exchange Online mailbox with a license "+
			"(not on-premises, inactive, soft-deleted or a shared mailbox never signed in to); or send through SMTP instead")
	case code == "errorsendasdenied":
		return setup(ReasonAccess, "grant mailbox "+mbox+" Send As permission on the channel's From address "+
			"(Add-RecipientPermission -Identity FROM -Trustee "+mbox+" -AccessRights SendAs), or send from the mailbox's own address")
	case ae.Status == http.StatusForbidden:
		return setup(ReasonAccess, "give the app registration the Microsoft Graph application permission Mail.Send and grant "+
			"admin consent; if an application access policy limits the app, include "+mbox+" in its group "+
			"(Test-ApplicationAccessPolicy -Identity "+mbox+" -AppId CLIENT_ID)")
	case ae.Status == http.StatusNotFound || code == "errorinvaliduser" || code == "resourcenotfound":
		return setup(ReasonMailbox, "mailbox "+mbox+" was not found in the tenant: check graph_servers' mailbox "+
			"(its user principal name) and the tenant of the app registration")
	case ae.Status == http.StatusRequestEntityTooLarge || code == "errormessagesizeexceeded":
		return &relay.Error{Code: 552, Enhanced: relay.CodeTooBig, Reason: ReasonSize, Fault: relay.FaultMessage, Stage: relay.StageData, Err: ae,
			Msg: fmt.Sprintf("message too large for mailbox %s (%s)", mbox, graph)}
	case strings.Contains(code, "mime") || code == "errorinvalidrecipients" || code == "errorinvalidproperty" && strings.Contains(strings.ToLower(ae.Message), "recipient"):
		return &relay.Error{Code: 554, Enhanced: relay.CodeMalformed, Reason: ReasonRejected, Fault: relay.FaultMessage, Stage: relay.StageData, Err: ae,
			Msg: fmt.Sprintf("Microsoft Graph refused the message (%s)", graph)}
	}
	return &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonBadRequest, Fault: relay.FaultSetup, Err: ae,
		Remedy: "Graph did not accept mailgate's request for " + t.o.Name + ": see the error and its request-id; check the endpoint and mailbox",
		Msg:    fmt.Sprintf("Microsoft Graph refused the request for mailbox %s (%s); mail deferred", mbox, graph)}
}

// tokenError is the setup fault for an access token that cannot be had; the token source's own
// message and remedy (auth/oauth's) are kept.
func (t *Transport) tokenError(err error) *relay.Error {
	re := &relay.Error{Code: 451, Enhanced: relay.CodeTempAuth, Reason: ReasonAuth, Fault: relay.FaultSetup, Stage: relay.StageAuth, Err: err,
		Msg:    fmt.Sprintf("no OAuth access token for Microsoft Graph mailbox %s; mail deferred", t.o.Name),
		Remedy: "check `mailgate oauth status` for server " + t.o.Name}
	if inner, ok := relay.AsError(err); ok {
		re.Msg = fmt.Sprintf("Microsoft Graph %s: %s; mail deferred", t.o.Name, inner.Msg)
		if inner.Remedy != "" {
			re.Remedy = inner.Remedy
		}
		re.RetryAfter = inner.RetryAfter
	}
	return re
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func clip(s string) string {
	if len(s) > maxDiagnostic {
		return s[:maxDiagnostic] + "…"
	}
	return s
}
