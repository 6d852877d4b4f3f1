package submit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/auth"
	"github.com/mailgate/mailgate/relay"
)

// backend makes one session per connection (and a fresh one after STARTTLS).
type backend struct {
	srv      *Server
	listener string
}

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s := &session{srv: b.srv, listener: b.listener}
	if tc := connOf(c.Conn()); tc != nil {
		s.id, s.remote, s.conn = tc.id, tc.remote, tc
	}
	_, s.tls = c.TLSConnectionState()
	return s, nil
}

// session is one SMTP session. go-smtp calls it from the connection's goroutine, except Data during BDAT,
// which runs in a goroutine of its own while RSET may arrive: mu guards the transaction state.
type session struct {
	srv      *Server
	id       string
	listener string
	remote   netip.Addr
	tls      bool

	conn *trackedConn // nil only in tests that build sessions by hand

	mu           sync.Mutex
	authLogin    string // set by a successful AUTH
	recipients   []string
	unknownMechs int // AUTH commands with a mechanism mailgate does not offer
}

var _ smtp.AuthSession = (*session)(nil)

// AuthMechanisms lists PLAIN and LOGIN; go-smtp advertises them only over TLS or on an
// AllowInsecureAuth listener, and refuses AUTH otherwise (523 5.7.10).
func (s *session) AuthMechanisms() []string { return auth.Mechanisms() }

// Auth starts a SASL exchange. The mechanism is checked first (504 5.5.4 for one mailgate does not
// offer, RFC 4954 §6), so a client string never becomes a metric label or a log line of its own. The
// failed-AUTH limiter is asked twice: here for the client's ceiling, and in the check function for the
// (client, login) pair, before the password is verified, with the check counted while in flight.
func (s *session) Auth(mech string) (sasl.Server, error) {
	m := s.srv.o.Metrics.AuthAttempts
	if !slices.Contains(auth.Mechanisms(), mech) {
		m.WithLabelValues(mechanismOther, "unknown_mechanism").Inc()
		s.mu.Lock()
		s.unknownMechs++
		first := s.unknownMechs == 1
		s.mu.Unlock()
		if first { // one line per session: a loop of made-up mechanisms must not flood the log
			s.srv.log.Info("auth", "session", s.id, "listener", s.listener, "mechanism", quote(mech),
				"result", "unknown_mechanism", "remote", s.remote.String())
		}
		return nil, errUnknownMechanism
	}
	ip := s.remote
	if retry, ok := s.srv.limiter.Allow(ip); !ok {
		m.WithLabelValues(mech, "rate_limited").Inc()
		s.srv.log.Warn("auth", "session", s.id, "listener", s.listener, "mechanism", mech, "result", "rate_limited",
			"remote", s.remote.String(), "retry_after_seconds", retry.Seconds())
		return nil, tooManyAuthFailures(retry)
	}
	fail := func(result, login string) {
		m.WithLabelValues(mech, "failure").Inc()
		s.srv.log.Info("auth", append([]any{"session", s.id, "listener", s.listener, "mechanism", mech,
			"result", result, "remote", s.remote.String(), "tls", s.tls}, s.loginAttrs(login)...)...)
	}
	server, _ := auth.NewServer(mech, func(login, password string) error {
		// Waits while checks in flight from this client may still fail; bounded so that a client
		// cannot park its sessions here.
		ctx, cancel := context.WithTimeout(s.srv.ctx, authCheckWait)
		defer cancel()
		attempt, retry, ok := s.srv.limiter.Begin(ctx, ip, login)
		if !ok {
			m.WithLabelValues(mech, "rate_limited").Inc()
			s.srv.log.Warn("auth", append([]any{"session", s.id, "listener", s.listener, "mechanism", mech,
				"result", "rate_limited", "remote", s.remote.String(), "retry_after_seconds", retry.Seconds()},
				s.loginAttrs(login)...)...)
			return tooManyAuthFailures(retry)
		}
		p, err := s.srv.o.CheckPassword(s.srv.rules.Load().directory, login, password)
		if err != nil {
			attempt.Failed()
			fail("failure", login)
			return smtp.ErrAuthFailed // 535 5.7.8, RFC 4954 §6
		}
		attempt.Succeeded()
		s.mu.Lock()
		s.authLogin = p.Login
		s.mu.Unlock()
		if tc := s.conn; tc != nil {
			tc.authenticated()
		}
		m.WithLabelValues(mech, "success").Inc()
		s.srv.log.Info("auth", "session", s.id, "listener", s.listener, "mechanism", mech, "result", "success",
			"principal", p.Login, "remote", s.remote.String(), "tls", s.tls)
		return nil
	})
	return saslGuard{Server: server, fail: func(result string) {
		// The SASL layer refused before any password check: count it against the client's ceiling
		// like a failed check, so probing the parser costs attempts too.
		ctx, cancel := context.WithTimeout(s.srv.ctx, authCheckWait)
		defer cancel()
		if attempt, _, ok := s.srv.limiter.Begin(ctx, ip, ""); ok {
			attempt.Failed()
		}
		fail(result, "")
	}}, nil
}

// authCheckWait bounds how long a password check waits for the checks in flight before it (from the
// same client) to end: each is one bcrypt comparison, well under a second.
const authCheckWait = 10 * time.Second

// mechanismOther is the metric label of every mechanism mailgate does not offer: labels come from a
// fixed set, never from the client.
const mechanismOther = "other"

// errUnknownMechanism is RFC 4954 §6's reply to an AUTH mechanism the server does not support.
var errUnknownMechanism = &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 5, 4},
	Message: "Unrecognized authentication type"}

// tooManyAuthFailures is RFC 4954 §6's 454 4.7.0 (temporary authentication failure), telling the
// client when the window ends.
func tooManyAuthFailures(retry time.Duration) error {
	return &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0},
		Message: fmt.Sprintf("Too many failed authentication attempts, retry in %ds", int(retry.Seconds()))}
}

// loginAttrs names the login of a failed attempt in the log when it is a known user's. A login no user
// has is not written: users type passwords into the login field, and a password must never reach a log.
func (s *session) loginAttrs(login string) []any {
	if login == "" {
		return nil
	}
	if p, ok := s.srv.rules.Load().directory.Principal(login); ok {
		return []any{"login", p.Login}
	}
	return []any{"login_known", false}
}

// maxQuoted bounds how much of a client-supplied string a log line quotes.
const maxQuoted = 64

// quote makes a client string safe to log: at most maxQuoted bytes of printable ASCII.
func quote(v string) string {
	if len(v) > maxQuoted {
		v = v[:maxQuoted]
	}
	return sanitize(v)
}

// saslGuard turns the SASL layer's own errors (malformed PLAIN, foreign authorization identity, LOGIN
// talking past its end) into SMTP replies: go-smtp would send their text as 454. They count as failures,
// so probing the parser costs attempts too.
type saslGuard struct {
	sasl.Server
	fail func(result string)
}

func (g saslGuard) Next(response []byte) ([]byte, bool, error) {
	ch, done, err := g.Server.Next(response)
	if err == nil {
		return ch, done, nil
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return ch, done, se
	}
	if errors.Is(err, auth.ErrAuthzid) {
		g.fail("authzid")
		return nil, true, smtp.ErrAuthFailed
	}
	g.fail("malformed")
	return nil, true, &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 5, 2},
		Message: "Malformed authentication exchange"}
}

// principal resolves who the session acts as under the current rules: the authenticated user as the
// current directory knows them, else a trusted network's service principal, else nobody.
func (s *session) principal(r *Rules) *auth.Principal {
	s.mu.Lock()
	login := s.authLogin
	s.mu.Unlock()
	if login != "" {
		p, _ := r.directory.Principal(login)
		return p // nil when a reload removed the user: they must not go on sending
	}
	if p, ok := r.directory.Trusted(s.remote); ok {
		return p
	}
	return nil
}

var errAuthRequired = &relay.Error{Code: 530, Enhanced: relay.CodeAuthRequired,
	Msg: "Authentication required", Reason: "auth_required"} // RFC 4954 §6

// Mail starts a transaction. The reverse-path the client gives is ignored: the envelope sender is the
// channel's, decided at DATA.
func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if s.principal(s.srv.rules.Load()) == nil {
		return s.reply(stageMail, errAuthRequired, "remote", s.remote.String())
	}
	if s.conn != nil {
		s.conn.authenticated() // a trusted network's client is done authenticating here
	}
	s.mu.Lock()
	s.recipients = s.recipients[:0]
	s.mu.Unlock()
	return nil
}

// Rcpt checks one recipient: syntax, the recipient limit and the suppression list.
func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if !relay.ValidAddress(to) {
		// RFC 3463 X.1.3: bad destination mailbox address syntax.
		return s.reply(stageRcpt, relay.Errorf(501, "5.1.3", "bad_address", "Bad recipient address syntax"))
	}
	s.mu.Lock()
	n := len(s.recipients)
	dup := false
	for _, r := range s.recipients {
		dup = dup || strings.EqualFold(r, to)
	}
	s.mu.Unlock()
	if dup {
		return nil // a repeated recipient gets the message once
	}
	if n >= s.srv.o.MaxRecipients {
		// RFC 5321 §4.5.3.1.10: 452 too many recipients; the client sends the rest in another transaction.
		return s.reply(stageRcpt, relay.Errorf(452, "4.5.3", "too_many_recipients", "Too many recipients"))
	}
	ctx, cancel := context.WithTimeout(s.srv.ctx, s.srv.o.LookupTimeout)
	defer cancel()
	reason, suppressed, err := s.srv.o.Suppressions.Suppressed(ctx, to)
	if err != nil {
		return s.reply(stageRcpt, err)
	}
	if suppressed {
		return s.reply(stageRcpt, relay.Errorf(550, relay.CodeBadMailbox, "suppressed",
			"Recipient is on the suppression list: %s", reason))
	}
	s.mu.Lock()
	s.recipients = append(s.recipients, to)
	s.mu.Unlock()
	return nil
}

// Reset ends the transaction (RSET, a new EHLO, or the end of DATA).
func (s *session) Reset() {
	s.mu.Lock()
	s.recipients = nil
	s.mu.Unlock()
}

// Logout is called when the connection closes or STARTTLS begins; the connection slot is freed by the
// connection itself.
func (s *session) Logout() error { return nil }

// Data receives the message (DATA or BDAT) and answers with the one reply of the transaction.
func (s *session) Data(r io.Reader) error {
	if s.conn != nil {
		s.conn.beginData()
		defer s.conn.endData()
	}
	s.mu.Lock()
	rcpts := append([]string(nil), s.recipients...)
	s.mu.Unlock()
	received := s.srv.o.Now()

	f := newRawMessage(s.srv.o.TempDir, &s.srv.raws)
	defer f.Close()
	size, err := s.srv.receive(r, f)
	if err != nil {
		return s.reply(stageData, err)
	}
	return s.deliver(f, size, rcpts, received)
}

var (
	errBareLineEnding = relay.Errorf(554, relay.CodeMalformed, "bare_line_ending",
		"Message refused: bare CR or LF found; lines must end with CRLF (RFC 5321 section 2.3.8)")
	errNULByte = relay.Errorf(554, relay.CodeMalformed, "nul_byte",
		"Message refused: NUL byte found (RFC 5322 section 2.3 forbids it in a message)")
	errTooBig = relay.Errorf(552, relay.CodeTooBig, "size", "Message too big")
	// RFC 5322 §2.1.1 limits lines to 998 characters; go-smtp allows twice the RFC 5321 §4.5.3.1.6 limit.
	errLineTooLong = relay.Errorf(554, relay.CodeMalformed, "line_too_long",
		"Message has a line longer than 2000 characters (RFC 5322 section 2.1.1 allows 998)")
)

// receive streams the message into f (memory, or a file for a large one), checking line endings. It always reads r to its end (or to a
// read error), so that the reply is sent at the right place in the stream however bad the content.
// go-smtp's DATA reader fills the whole buffer before returning, so writes to f are already large.
func (srv *Server) receive(r io.Reader, f io.Writer) (int64, error) {
	bp, ok := srv.bufs.Get().(*[]byte)
	if !ok {
		b := make([]byte, 32<<10)
		bp = &b
	}
	defer srv.bufs.Put(bp)
	buf := *bp
	var (
		guard lineGuard
		size  int64
		werr  error
	)
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			guard.check(buf[:n])
			if !guard.bad && werr == nil {
				_, werr = f.Write(buf[:n])
			}
			size += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if errors.Is(rerr, smtp.ErrDataTooLarge) {
				return size, errTooBig // go-smtp discards the rest of the data itself
			}
			if errors.Is(rerr, smtp.ErrTooLongLine) {
				// go-smtp cannot find the end of the data any more and closes the connection after
				// this reply; the client at least learns why.
				return size, errLineTooLong
			}
			var cut *cutError
			if errors.As(rerr, &cut) && cut.reason == cutDataTooSlow {
				// The client is still there, only too slow: it reads this before go-smtp's 421.
				return size, relay.Wrap(rerr, 451, relay.CodeTempTimeout, cutDataTooSlow,
					fmt.Sprintf("Transfer too slow (under %d bytes per second), closing connection", srv.o.DataMinRate))
			}
			// The client went away, timed out, or sent RSET during BDAT: nobody to answer, but the
			// reason is logged.
			return size, relay.Wrap(rerr, 451, relay.CodeTempTimeout, "transfer_failed", "Message transfer failed")
		}
	}
	if guard.nul {
		return size, errNULByte
	}
	if !guard.ok() {
		return size, errBareLineEnding
	}
	if werr != nil {
		return size, werr // disk full or similar: internal
	}
	return size, nil
}

// maxHeaderBytes bounds the header parsed in memory (the body never is). Far above any real header —
// Postfix's header_size_limit is 100 KiB — so only abuse hits it.
const maxHeaderBytes = 1 << 20

var errHeaderTooBig = errors.New("submit: header exceeds limit")

// headerLimit fails, rather than ending early, at the limit: a truncated header would parse "fine" and
// hide a second From field beyond the cut.
type headerLimit struct {
	r io.Reader
	n int64
}

func (h *headerLimit) Read(p []byte) (int, error) {
	if h.n <= 0 {
		return 0, errHeaderTooBig
	}
	if int64(len(p)) > h.n {
		p = p[:h.n]
	}
	n, err := h.r.Read(p)
	h.n -= int64(n)
	return n, err
}

// readHeader parses the header of the raw message (at most maxHeaderBytes) through a recycled reader.
func (s *session) readHeader(f io.ReaderAt, size int64) (textproto.Header, error) {
	br, _ := s.srv.headerReaders.Get().(*bufio.Reader)
	if br == nil {
		br = bufio.NewReader(nil)
	}
	br.Reset(&headerLimit{r: io.NewSectionReader(f, 0, size), n: maxHeaderBytes})
	defer func() {
		br.Reset(nil)
		s.srv.headerReaders.Put(br)
	}()
	return textproto.ReadHeader(br)
}

func drain(r io.Reader) { _, _ = io.Copy(io.Discard, r) }

// deliver checks the received message against the channel policy, composes it into a spool draft and
// commits it.
func (s *session) deliver(f io.ReaderAt, size int64, rcpts []string, received time.Time) error {
	rules := s.srv.rules.Load()
	p := s.principal(rules)
	if p == nil {
		return s.reply(stageData, errAuthRequired)
	}
	// The raw message is read twice from its start (header, then composition) with positioned reads.
	header, err := s.readHeader(f, size)
	if errors.Is(err, errHeaderTooBig) {
		return s.reply(stageData, relay.Errorf(552, relay.CodeTooBig, "header_size", "Message header too large"),
			"principal", p.Login)
	}
	if err != nil {
		return s.reply(stageData, relay.Wrap(err, 554, relay.CodeMalformed, "malformed", "Message header is malformed"),
			"principal", p.Login)
	}
	from, err := fromAddress(header)
	if err != nil {
		return s.reply(stageData, err, "principal", p.Login)
	}
	ch, known := rules.Channel(from)
	if !known || !p.May(ch.Name).Reply {
		// The same answer whether the channel exists or not: no probing for channel addresses.
		return s.reply(stageData, relay.Errorf(550, relay.CodePolicy, "from_not_permitted",
			"You may not send as %s", from), "principal", p.Login)
	}
	if err := checkReplyTo(header, rules, p); err != nil {
		return s.reply(stageData, err, "principal", p.Login, "channel", ch.Name)
	}

	agent, err := actingAgent(header, rules, p, ch)
	if err != nil {
		return s.reply(stageData, err, "principal", p.Login, "channel", ch.Name)
	}
	sub := &Submission{SessionID: s.id, Principal: p, Agent: agent, Channel: ch, MailFrom: ch.MailFrom, Recipients: rcpts,
		Received: received, Header: header, RawSize: size}
	ctx, cancel := context.WithTimeout(s.srv.ctx, s.srv.o.ProcessTimeout)
	defer cancel()

	draft, err := s.srv.o.Spool.Create()
	if err != nil {
		return s.reply(stageData, err, "principal", p.Login, "channel", ch.Name)
	}
	committed := false
	defer func() {
		if !committed {
			_ = draft.Abort()
		}
	}()
	started := time.Now()
	composed, err := rules.composer.Compose(ctx, io.NewSectionReader(f, 0, size), draft, sub)
	if err == nil && composed == nil {
		err = errors.New("composer returned no result")
	}
	if err != nil {
		return s.reply(stageData, err, "principal", p.Login, "channel", ch.Name)
	}
	s.srv.o.Metrics.ComposeDuration.Observe(time.Since(started).Seconds())
	s.srv.o.Metrics.ComposedMessageBytes.Observe(float64(composed.Size))
	if !composed.Reply {
		// DESIGN §2: a message that is not a reply is new outbound email.
		if !ch.OutboundActive {
			return s.reply(stageData, relay.Errorf(550, relay.CodePolicy, "outbound_inactive",
				"New outbound email is not enabled on this channel; only replies are accepted"),
				"principal", p.Login, "channel", ch.Name)
		}
		if !p.May(ch.Name).Outbound {
			return s.reply(stageData, relay.Errorf(550, relay.CodePolicy, "outbound_not_permitted",
				"You may not send new outbound email from %s, only replies", ch.FromAddress),
				"principal", p.Login, "channel", ch.Name)
		}
	}
	if ch.MaxMessageBytes > 0 && composed.Size > ch.MaxMessageBytes {
		return s.reply(stageData, relay.Errorf(552, relay.CodeTooBig, "size",
			"Message too big for this channel's transport (%d bytes composed, limit %d)", composed.Size, ch.MaxMessageBytes),
			"principal", p.Login, "channel", ch.Name)
	}
	queueID, err := draft.Commit(ctx, relay.Envelope{
		Channel: ch.Name, Transport: ch.Transport, MailFrom: ch.MailFrom, Recipients: rcpts,
		MessageID: composed.MessageID, Ticket: composed.Ticket, Principal: p.Login, Agent: agentLogin(agent), ForceTLS: ch.ForceTLS,
		Received: received,
	})
	if err != nil {
		return s.reply(stageData, err, "principal", p.Login, "channel", ch.Name)
	}
	committed = true
	s.srv.o.Metrics.MessagesAccepted.WithLabelValues(ch.Name).Inc()
	s.srv.log.Info("accepted", "session", s.id, "listener", s.listener, "queue_id", queueID, "channel", ch.Name,
		"transport", ch.Transport, "principal", p.Login, "agent", agentLogin(agent), "message_id", composed.MessageID, "ticket", composed.Ticket, "reply", composed.Reply,
		"recipients", len(rcpts), "raw_size", size, "size", composed.Size)
	// go-smtp sends an *SMTPError returned by Data as the reply, whatever its code: this is how the
	// queue id reaches the client.
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "queued as " + sanitize(queueID)}
}

// addressParser parses address header fields for their addresses. Display names in unknown charsets
// are not decoded: only the addresses matter here.
var addressParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, input io.Reader) (io.Reader, error) { return input, nil },
}}

// fromAddress returns the single address of the single From field (RFC 5322 §3.6: exactly one From
// field; several mailboxes would need a Sender, and mailgate sends as exactly one channel).
func fromAddress(h textproto.Header) (string, error) {
	values := h.Values("From")
	if len(values) != 1 {
		return "", relay.Errorf(554, relay.CodeMalformed, "malformed", "Message must have exactly one From header field")
	}
	list, err := addressParser.ParseList(values[0])
	if err != nil || len(list) != 1 {
		return "", relay.Errorf(554, relay.CodeMalformed, "malformed", "From header must hold exactly one address")
	}
	return strings.ToLower(list[0].Address), nil
}
