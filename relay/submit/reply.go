package submit

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/relay"
)

// Stages of a session, the "stage" label of the rejection metric.
const (
	stageConnect = "connect"
	stageSession = "session" // a connection cut for taking too long (trackedConn)
	stageMail    = "mail"
	stageRcpt    = "rcpt"
	stageData    = "data"
)

// reply is the one place where an error becomes the SMTP reply a client sees. Only a *relay.Error's code
// and client-safe text are ever sent; deadlines become 451 4.4.2 (RFC 3463: bad connection / timeout);
// everything else becomes 451 4.3.0 with the session id, which an operator can grep for in the log where
// the cause is written. A full disk or exhausted quota (ENOSPC, EDQUOT), wherever it is met and however
// it was wrapped, becomes 452 4.3.1. Every refusal is counted by stage and reason and logged once.
func (s *session) reply(stage string, err error, attrs ...any) error {
	if err == nil {
		return nil
	}
	code, enhanced, msg, reason := 451, relay.CodeTempLocal, "internal error (session "+s.id+")", "internal"
	internal := true
	if errInsufficientStorage(err) {
		// Before the *relay.Error case: a layer that wrapped the write failure as 451 4.3.0 does not
		// know that the disk is full, and the client should hear that it is temporary and why.
		code, enhanced, reason = 452, relay.CodeTempStorage, "insufficient_storage"
		msg = "insufficient system storage (session " + s.id + "), try again later"
	} else if re, ok := relay.AsError(err); ok && re.Code >= 400 && re.Code < 600 {
		if _, valid := re.Enhanced.Parts(); valid && re.Enhanced[0] == '0'+byte(re.Code/100) {
			code, enhanced, msg, reason, internal = re.Code, re.Enhanced, re.Msg, re.Reason, false
			if reason == "" {
				reason = "policy"
			}
		}
	} else if errors.Is(err, context.DeadlineExceeded) {
		code, enhanced, msg, reason = 451, relay.CodeTempTimeout, "timed out processing the message (session "+s.id+"), try again later", "timeout"
	} else if errors.Is(err, context.Canceled) {
		code, enhanced, msg, reason = 451, relay.CodeTempLocal, "service shutting down (session "+s.id+"), try again later", "shutdown"
	}

	s.srv.o.Metrics.MessagesRejected.WithLabelValues(stage, reason).Inc()
	args := append([]any{"session", s.id, "listener", s.listener, "stage", stage, "code", code,
		"enhanced", string(enhanced), "reason", reason}, attrs...)
	level := slog.LevelInfo
	if internal || code < 500 {
		// The cause is for operators only; it may hold paths or upstream details, never client data
		// that was not already theirs, and never AUTH data (AUTH errors do not come through here).
		args = append(args, "err", err.Error())
		level = slog.LevelWarn
	}
	s.srv.log.Log(context.Background(), level, "rejected", args...)

	parts, _ := enhanced.Parts()
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode(parts), Message: sanitize(msg)}
}

// sanitize keeps a reply text on one line of printable ASCII: go-smtp splits replies at LF, and a CR or
// other control character from, say, a suppression reason stored from an upstream bounce must not end
// the reply line early.
func sanitize(msg string) string {
	var b strings.Builder
	for _, r := range msg {
		switch {
		case r < 32 || r == 127:
			b.WriteByte(' ')
		case r > 127:
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
		if b.Len() >= 400 {
			break
		}
	}
	return strings.TrimSpace(b.String())
}
