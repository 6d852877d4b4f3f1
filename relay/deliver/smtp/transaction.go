package smtp

import (
	"context"
	"fmt"
	"io"
	"net/textproto"
	"os"
	"strings"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// txState is where a session stands between mail transactions (RFC 5321 §3.3). Only a session at a
// clean boundary goes back to the pool: a session left with a transaction open would greet the next
// message's MAIL with "503 nested MAIL command", and that refusal would land on an innocent customer.
type txState int

const (
	// txClean: no transaction open; the next MAIL may follow. Reached by the final reply after the
	// dot (whatever it said), or by RSET answered 250.
	txClean txState = iota
	// txOpen: MAIL was sent and the transaction did not end with a final reply (every RCPT refused,
	// DATA refused, MAIL refused). RSET (RFC 5321 §4.1.1.5) must clean it before reuse.
	txOpen
	// txBroken: the connection failed, the server said 421, or replies are out of step: close it.
	txBroken
)

// transaction is one mail transaction on a session: MAIL, one RCPT per pending recipient, DATA, the
// body and its final reply. Pipelined (RFC 2920, when offered) and unpipelined sessions run the same
// steps over the same protocol layer (the session's textproto.Conn); they differ only in when commands
// are flushed: all at once, or each before its reply is read. After a refused MAIL a pipelined client
// still reads the RCPT and DATA replies the server owes it (RFC 2920 §3.1), an unpipelined one sends
// nothing more. Either way a transaction that did not end with its final reply is closed with RSET
// before the session is pooled — mox's smtpclient keeps the same single "needs RSET" fact.
type transaction struct {
	t   *Transport
	s   *session
	tp  *textproto.Conn
	m   *relay.Message
	idx []int // the recipients of m this attempt sends to
	res *relay.Result

	state txState
	// stale: the session died before the server answered anything (a dead pooled connection); the
	// caller retries on a fresh one.
	stale bool
}

// transact runs one transaction for the recipients idx on s and reports the outcome in res. healthy
// says s is at a clean boundary and may be pooled; stale says a reused session was dead before the
// server accepted anything.
func (t *Transport) transact(ctx context.Context, s *session, m *relay.Message, body io.Reader, idx []int, res *relay.Result) (reply string, healthy, stale bool) {
	stop := context.AfterFunc(ctx, func() { s.conn.Close() })
	defer stop()
	if s.maxSize > 0 && m.Size > s.maxSize {
		failAll(res.Errs, idx, &relay.Error{Code: 552, Enhanced: relay.CodeTooBig, Reason: ReasonSize,
			Msg: fmt.Sprintf("message size %d exceeds the SIZE %d advertised by upstream %s", m.Size, s.maxSize, t.o.Name)})
		return "", true, false
	}
	utf8 := !isASCII(m.MailFrom)
	for _, i := range idx {
		utf8 = utf8 || !isASCII(m.Recipients[i])
	}
	if utf8 && !s.smtputf8 {
		// RFC 6531 §3.2: without SMTPUTF8 a non-ASCII address cannot be sent at all.
		failAll(res.Errs, idx, &relay.Error{Code: 553, Enhanced: "5.6.7", Reason: ReasonUpstream,
			Msg: fmt.Sprintf("upstream %s does not support SMTPUTF8, needed for a non-ASCII address", t.o.Name)})
		return "", true, false
	}
	s.uses++
	if sk, ok := body.(io.Seeker); ok {
		// A BDAT attempt on a session found dead sent (part of) the body already; this one starts over.
		if _, err := sk.Seek(0, io.SeekStart); err != nil {
			failAll(res.Errs, idx, &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal,
				Msg: "cannot read the queued message", Err: err})
			return "", true, false
		}
	}
	if s.tp == nil {
		s.tp = textproto.NewConn(s.base)
	}
	x := &transaction{t: t, s: s, tp: s.tp, m: m, idx: idx, res: res}
	reply = x.run(body, utf8)
	if x.state == txOpen {
		x.reset()
	}
	_ = s.base.SetDeadline(time.Time{})
	return reply, x.state == txClean, x.stale
}

// run sends the transaction and returns the final reply on success. With BDAT (chunkable) the whole
// transaction goes in one write and its replies are read after it; otherwise MAIL (pipelined: with
// every RCPT and DATA) goes first and the body only after 354.
func (x *transaction) run(body io.Reader, utf8 bool) string {
	size, chunked := x.chunkable(body)
	pipelined := x.s.pipelining || chunked
	cmds := x.commands(utf8)
	x.state = txOpen
	switch {
	case chunked:
		cmds[len(cmds)-1] = fmt.Sprintf("BDAT %d LAST", size)
		if !x.sendChunked(cmds, body, size) {
			return ""
		}
	case pipelined:
		if !x.sendEnvelope(cmds...) {
			return ""
		}
	default:
		if !x.sendEnvelope(cmds[0]) {
			return ""
		}
	}
	mailRefused, ok := x.mailReply(pipelined)
	if !ok {
		return ""
	}
	accepted, ok := x.rcptReplies(cmds, pipelined, mailRefused)
	if !ok {
		return ""
	}
	if chunked {
		return x.chunkReply(accepted)
	}
	return x.data(body, accepted, pipelined)
}

// sendEnvelope sends the first command group. Nothing was answered yet, so a reused session that
// fails here was dead before it was used: stale.
func (x *transaction) sendEnvelope(lines ...string) bool {
	if err := x.send(lines...); err != nil {
		x.broken(x.idx, x.t.classify(err, relay.StageMail))
		x.stale = x.s.uses > 1
		return false
	}
	return true
}

// mailReply reads MAIL's reply. After a refusal a pipelined client goes on reading the RCPT and DATA
// (or BDAT) replies the server owes it (RFC 2920 §3.1), so mailRefused is reported, not the end; an
// unpipelined one stops there.
func (x *transaction) mailReply(pipelined bool) (mailRefused, ok bool) {
	err := x.reply(250)
	switch {
	case err == nil:
		return false, true
	case !x.clean(err):
		x.broken(x.idx, x.t.classify(err, relay.StageMail))
		x.stale = !isSMTPReply(err) && x.s.uses > 1
		return false, false
	}
	x.fail(x.idx, x.t.classify(err, relay.StageMail))
	return true, pipelined
}

// rcptReplies reads one reply per RCPT (sending each first when not pipelined) and returns the
// recipients accepted.
func (x *transaction) rcptReplies(cmds []string, pipelined, mailRefused bool) ([]int, bool) {
	var accepted []int
	for k, i := range x.idx {
		if !pipelined {
			if err := x.send(cmds[1+k]); err != nil {
				x.broken(append(accepted, x.idx[k:]...), x.t.classify(err, relay.StageRcpt))
				return nil, false
			}
		}
		err := x.reply(25)
		switch {
		case !x.clean(err):
			x.broken(append(accepted, x.idx[k:]...), x.t.classify(err, relay.StageRcpt))
			return nil, false
		case mailRefused:
		case err == nil:
			accepted = append(accepted, i)
		default:
			x.fail([]int{i}, x.t.classify(err, relay.StageRcpt))
		}
	}
	return accepted, true
}

// data runs DATA for the accepted recipients: 354, the dot-stuffed body, the final reply.
func (x *transaction) data(body io.Reader, accepted []int, pipelined bool) string {
	t := x.t
	if !pipelined {
		if len(accepted) == 0 {
			return ""
		}
		if err := x.send("DATA"); err != nil {
			x.broken(accepted, t.classify(err, relay.StageData))
			return ""
		}
	}
	if err := x.reply(354); err != nil {
		if !x.clean(err) {
			x.broken(accepted, t.classify(err, relay.StageData))
			return ""
		}
		// Expected when no recipient was accepted (RFC 2920 §3.1); else every accepted one fails.
		x.fail(accepted, t.classify(err, relay.StageData))
		return ""
	}
	if len(accepted) == 0 {
		// A server that starts DATA without a recipient (or after a refused MAIL) gets an empty
		// message, which it must refuse; its final reply ends the transaction in step.
		if err := x.send("."); err != nil {
			x.broken(nil, nil)
			return ""
		}
		if err := x.reply(250); !x.clean(err) {
			x.broken(nil, nil)
			return ""
		}
		x.state = txClean
		return ""
	}
	dw := newDotWriter(x.s.bodyWriter())
	if re, _ := t.copyBody(x.s, dw, body, -1); re != nil {
		x.broken(accepted, re)
		return ""
	}
	if err := dw.Close(); err != nil {
		x.broken(accepted, t.classify(err, relay.StageData))
		return ""
	}
	code, msg, err := x.finalReply()
	if !x.clean(err) {
		x.broken(accepted, t.classify(err, relay.StageData))
		return ""
	}
	x.state = txClean // the final reply ends the transaction, whatever it says (RFC 5321 §4.1.1.4)
	if err != nil {
		x.fail(accepted, t.classify(err, relay.StageData))
		return ""
	}
	return fmt.Sprintf("%d %s", code, oneLine(msg))
}

// chunkable reports whether the transaction can go as one pipelined group with BDAT (the server offers
// CHUNKING and PIPELINING), and the body's exact size: BDAT announces it before the first byte, so a
// body whose size is not known for certain goes by DATA.
func (x *transaction) chunkable(body io.Reader) (int64, bool) {
	if !x.s.chunking || !x.s.pipelining {
		return 0, false
	}
	if _, ok := body.(io.Seeker); !ok { // a retry on a fresh session must send it again from the start
		return 0, false
	}
	switch b := body.(type) {
	case interface{ Size() int64 }: // the spool's segment reader (io.SectionReader)
		return b.Size(), true
	case *os.File: // a large body in a file of its own
		st, err := b.Stat()
		if err != nil || !st.Mode().IsRegular() {
			return 0, false
		}
		return st.Size(), true
	}
	return 0, false
}

// sendChunked writes MAIL, every RCPT and "BDAT <size> LAST" followed by the body in one write (RFC
// 3030 with RFC 2920): one round trip per message where DATA takes two (the body waits for 354), and
// no dot-stuffing. The server reads the chunk whatever it answered before it (RFC 3030 §4.2), so the
// replies stay in step after a refused MAIL or RCPT.
func (x *transaction) sendChunked(cmds []string, body io.Reader, size int64) bool {
	w := x.s.bodyWriter()
	for _, c := range cmds {
		_, _ = w.WriteString(c)
		_, _ = w.WriteString("\r\n")
	}
	if re, local := x.t.copyBody(x.s, w, body, size); re != nil {
		// Nothing was answered yet: stale as in sendEnvelope, unless the spool could not be read
		// (which a new session would not fix).
		x.broken(x.idx, re)
		x.stale = !local && x.s.uses > 1
		return false
	}
	if err := w.Flush(); err != nil {
		x.broken(x.idx, x.t.classify(err, relay.StageMail))
		x.stale = x.s.uses > 1
		return false
	}
	return true
}

// chunkReply reads BDAT LAST's reply, the transaction's final one. Only a 250 ends the transaction for
// certain; after any refusal (no recipient accepted, a refused MAIL, the message refused) the state
// stays open, so the session is cleaned with RSET before it is pooled.
func (x *transaction) chunkReply(accepted []int) string {
	code, msg, err := x.finalReply()
	switch {
	case !x.clean(err):
		x.broken(accepted, x.t.classify(err, relay.StageData))
		return ""
	case len(accepted) == 0:
		// The BDAT refusal (no valid recipients) is expected; every recipient already has its outcome.
		return ""
	case err != nil:
		x.fail(accepted, x.t.classify(err, relay.StageData))
		return ""
	}
	x.state = txClean
	return fmt.Sprintf("%d %s", code, oneLine(msg))
}

// commands are the transaction's command lines: MAIL, one RCPT per recipient, DATA.
func (x *transaction) commands(utf8 bool) []string {
	var mail strings.Builder
	fmt.Fprintf(&mail, "MAIL FROM:<%s>", x.m.MailFrom)
	if x.s.ext8bit {
		mail.WriteString(" BODY=8BITMIME")
	}
	if x.s.extSize && x.m.Size > 0 {
		fmt.Fprintf(&mail, " SIZE=%d", x.m.Size)
	}
	if utf8 {
		mail.WriteString(" SMTPUTF8")
	}
	cmds := make([]string, 0, len(x.idx)+2)
	cmds = append(cmds, mail.String())
	for _, i := range x.idx {
		cmds = append(cmds, "RCPT TO:<"+x.m.Recipients[i]+">")
	}
	return append(cmds, "DATA")
}

// send writes command lines and flushes them as one segment.
func (x *transaction) send(lines ...string) error {
	for _, l := range lines {
		if _, err := x.tp.W.WriteString(l); err != nil {
			return err
		}
		if _, err := x.tp.W.WriteString("\r\n"); err != nil {
			return err
		}
	}
	return x.tp.W.Flush()
}

// reply reads one reply within CommandTimeout; a reply of another class than expect is returned as
// the *gosmtp.SMTPError go-smtp itself would give.
func (x *transaction) reply(expect int) error {
	_ = x.s.base.SetReadDeadline(time.Now().Add(x.t.o.CommandTimeout))
	_, _, err := x.tp.ReadResponse(expect)
	return protoErr(err)
}

// finalReply reads the reply after the dot, within FinalReplyTimeout (RFC 5321 §4.5.3.2.6: the server
// may take minutes to process the message).
func (x *transaction) finalReply() (int, string, error) {
	_ = x.s.base.SetReadDeadline(time.Now().Add(x.t.o.FinalReplyTimeout))
	code, msg, err := x.tp.ReadResponse(250)
	return code, msg, protoErr(err)
}

// clean reports whether the session is still in step after err: no error, or a reply other than 421
// (which announces that the server closes the connection, RFC 5321 §3.8).
func (x *transaction) clean(err error) bool {
	return err == nil || (isSMTPReply(err) && !isReply(err, 421))
}

// fail gives the recipients idx the outcome err and checks it for a quota reply.
func (x *transaction) fail(idx []int, err *relay.Error) {
	failAll(x.res.Errs, idx, err)
	x.t.checkQuota(err)
}

// broken marks the session unusable and fails idx with err (nil: nothing more to fail).
func (x *transaction) broken(idx []int, err *relay.Error) {
	x.state = txBroken
	if err != nil {
		x.fail(idx, err)
	}
}

// reset sends RSET to close an open transaction; the session is clean only when it is answered 250.
func (x *transaction) reset() {
	if err := x.send("RSET"); err != nil {
		x.state = txBroken
		return
	}
	if err := x.reply(250); err != nil {
		x.t.o.Logger.Debug("upstream refused RSET; closing the connection", "server", x.t.o.Name, "err", err)
		x.state = txBroken
		return
	}
	x.state = txClean
}
