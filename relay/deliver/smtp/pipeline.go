package smtp

import (
	"fmt"
	"io"
	"net/textproto"
	"strings"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// pipeline runs MAIL, RCPT and DATA as one group (RFC 2920 PIPELINING) when the upstream offers it:
// one round trip instead of 2 + recipients, on both ends. go-smtp's client has no pipelining, so the
// commands go over the session's connection directly, through a textproto.Conn of the session's own
// (go-smtp's reader holds nothing: an SMTP server speaks only when spoken to). Replies become the same
// errors go-smtp would return, so classification is shared with the unpipelined path.
//
// The results mirror transact: reply is the final answer, healthy says the session can be pooled, and
// stale says a reused session was dead before the server accepted anything.
func (t *Transport) pipeline(s *session, m *relay.Message, body io.Reader, idx []int, utf8 bool, res *relay.Result) (reply string, healthy, stale bool) {
	if s.tp == nil {
		s.tp = textproto.NewConn(s.base)
	}
	tp := s.tp
	_ = s.base.SetDeadline(time.Now().Add(t.o.CommandTimeout))
	defer s.base.SetDeadline(time.Time{})

	var cmds strings.Builder
	fmt.Fprintf(&cmds, "MAIL FROM:<%s>", m.MailFrom)
	if s.ext8bit {
		cmds.WriteString(" BODY=8BITMIME")
	}
	if s.extSize && m.Size > 0 {
		fmt.Fprintf(&cmds, " SIZE=%d", m.Size)
	}
	if utf8 {
		cmds.WriteString(" SMTPUTF8")
	}
	cmds.WriteString("\r\n")
	for _, i := range idx {
		fmt.Fprintf(&cmds, "RCPT TO:<%s>\r\n", m.Recipients[i])
	}
	cmds.WriteString("DATA\r\n")
	_, err := tp.W.WriteString(cmds.String())
	if err == nil {
		err = tp.W.Flush()
	}
	if err != nil {
		failAll(res.Errs, idx, t.classify(err, stageMail))
		return "", false, s.uses > 1
	}

	// MAIL
	_, _, err = tp.ReadResponse(250)
	if err != nil {
		err = protoErr(err)
		re := t.classify(err, stageMail)
		failAll(res.Errs, idx, re)
		t.checkQuota(re)
		// The RCPTs and DATA behind a refused MAIL are refused too, but servers differ in how (and
		// whether) they answer them: rather than wait on replies that may never come, the session ends
		// (a refused MAIL is rare and mostly ends the session anyway: quota, policy, auth).
		return "", false, !isSMTPReply(err) && s.uses > 1
	}
	// RCPT, one reply each
	accepted, ok := t.recipients(idx, res, func(int) error {
		_, _, err := tp.ReadResponse(25)
		return protoErr(err)
	})
	if !ok {
		return "", false, false
	}
	// DATA
	_, _, err = tp.ReadResponse(354)
	if err != nil {
		err = protoErr(err)
		if len(accepted) == 0 {
			// Expected: no valid recipient, so DATA is refused (RFC 2920 §3.1).
			return "", isSMTPReply(err) && !isReply(err, 421), false
		}
		re := t.classify(err, stageData)
		failAll(res.Errs, accepted, re)
		t.checkQuota(re)
		return "", isSMTPReply(err) && !isReply(err, 421), false
	}
	if len(accepted) == 0 {
		// A server that starts DATA without a recipient gets an empty message it must refuse; the
		// session stays in step.
		_, _ = tp.W.WriteString(".\r\n")
		_ = tp.W.Flush()
		_, _, err := tp.ReadResponse(250)
		return "", err == nil || isSMTPReply(protoErr(err)), false
	}
	dw := newDotWriter(tp.W)
	if re := t.copyBody(s, dw, body); re != nil {
		failAll(res.Errs, accepted, re)
		return "", false, false
	}
	if err := dw.Close(); err != nil {
		failAll(res.Errs, accepted, t.classify(err, stageData))
		return "", false, false
	}
	_ = s.base.SetDeadline(time.Now().Add(t.o.FinalReplyTimeout))
	code, msg, err := tp.ReadResponse(250)
	if err != nil {
		err = protoErr(err)
		re := t.classify(err, stageData)
		failAll(res.Errs, accepted, re)
		t.checkQuota(re)
		return "", isSMTPReply(err) && !isReply(err, 421), false
	}
	return fmt.Sprintf("%d %s", code, oneLine(msg)), true, false
}
