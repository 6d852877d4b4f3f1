// Package smtp delivers queued messages to a custom upstream SMTP server — Microsoft 365 (Exchange
// Online) with OAuth 2.0 or any submission server with a password — as a relay.Transport.
//
// Design:
//
//   - One Transport per configured server, and one budget per upstream identity (server name +
//     mailbox), kept for the life of the process in Budgets (budget.go) and shared by the Transports a
//     reload builds: the connection slots (MaxConnections; Exchange Online allows 3 per mailbox), the
//     pool of idle set-up sessions (TLS and AUTH done), the per-minute and per-day windows and a quota
//     pause. A delivery holds a slot while it uses a session and dials only when the pool is empty, so
//     busy + idle connections never exceed the slots, across a reload too; a pooled session set up with
//     other settings (a reload changed the host or the account) is closed instead of reused. Idle
//     sessions are closed after IdleTimeout; a session is dropped after any connection-level error or 421.
//   - One transaction state machine (transaction.go) for pipelined (RFC 2920: MAIL, every RCPT and
//     DATA in one round trip when offered) and unpipelined sessions, over one protocol layer. A session
//     goes back to the pool only at a clean transaction boundary: after the final reply to the dot
//     (RFC 5321 §4.1.1.4), or after RSET answered 250 when the transaction was cut short (every RCPT
//     refused, MAIL or DATA refused; §4.1.1.5). Anything else — a 421, a broken connection, replies out
//     of step — closes it, so the next message never meets "503 nested MAIL command". A pooled session
//     that turns out to be dead at MAIL (nothing accepted) is replaced by a freshly dialled one once,
//     and the idle sessions pooled with it are dropped too (an upstream restart kills them together).
//   - Where the server offers CHUNKING with PIPELINING (RFC 3030; Exchange and Postfix do), a
//     message goes as MAIL, every RCPT and "BDAT <size> LAST" followed by its body in one write: one
//     round trip per message instead of two (DATA's body must wait for 354), and no dot-stuffing. Only
//     a body whose exact size is known (the spool's) goes this way; BDAT LAST answered 250 ends the
//     transaction, any refusal is followed by RSET. Options.DisableChunking turns it off.
//   - go-smtp's client sets the session up (EHLO, AUTH) and ends it (QUIT); it has no context support
//     and no deadline while DATA is written, so every step has a deadline (DialTimeout for connect and
//     TLS handshake, CommandTimeout per reply, DataTimeout per written block through deadlineConn,
//     FinalReplyTimeout after the dot), and the Deliver context closes the connection when it ends.
//   - TLS: implicit (RFC 8314) or STARTTLS (RFC 3207), used whenever offered, TLS ≥ 1.2, handshake
//     forced at once. The certificate is always verified against RootCAs and TLSServerName; in
//     opportunistic mode an unverified certificate is accepted (encryption without authentication, as
//     Postfix's "may"), but credentials are only ever sent over TLS with a verified certificate, and a
//     Force TLS message is only sent over a verified TLS ≥ 1.2 session — otherwise nothing is sent and
//     each recipient gets 554 5.7.10 (relay.FaultTLS: bounced at once, not suppressed, alerted).
//   - Errors: every recipient's outcome is a *relay.Error (or nil) that reports what happened — the
//     upstream's code, enhanced code and text (the bounce diagnostic) and the Stage it came at — and
//     relay.Classify decides whose fault it is (DESIGN §4): an RCPT refusal with an address status code
//     is the address's, a refusal after the dot the message's, a refused envelope sender, relay access
//     denied, AUTH and account replies (530, 535, 5.7.57, 5.7.60, 5.7.139, ...) mailgate's or the
//     relay's setup: deferred and alerted with the remedy (Error.Remedy), never a bounce. Failures with
//     no reply to read (no token, no TLS for credentials) state FaultSetup themselves.
//   - Shaping: MessagesPerMinute (waits up to MaxShapingWait, else defers with RetryAfter),
//     RecipientsPerDay (recipients over the budget are deferred with RetryAfter, the rest are sent),
//     432 4.3.2 deferred with ThrottleRetryAfter, and a 554 5.2.0 quota reply pauses the whole identity
//     — deferred with RetryAfter and no connection attempted — until its daily window frees up.
//   - With a shared store (NewFleetBudgets, fleet.go) the slots are also leases held by every open
//     connection and the windows are counters in the store, so the limits hold for the whole fleet of
//     instances; a crashed instance's leases lapse.
//
// Secrets (password, tokens) live only in Options and the SASL exchange: never logged, never in an
// error, a metric or a probe report.
package smtp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/metrics"
)

// Transport delivers to one upstream SMTP server. It is safe for concurrent use by the queue's workers.
type Transport struct {
	o    Options
	addr string
	m    *metrics.Metrics
	b    *budget // the identity's slots, windows and pause, shared with the Transports a reload builds
	// shapingWait is m.ShapingWait's series for this server, looked up once: it is observed per message.
	shapingWait prometheus.Observer

	// fingerprint is what a pooled session must have been set up with to be reused by t: the
	// address, TLS mode and name, HELO name and authentication identity.
	fingerprint string

	mu     sync.Mutex
	closed bool

	advertisedSize atomic.Int64 // SIZE of the latest session set up (0: none advertised, or none yet)
}

var _ relay.Transport = (*Transport)(nil)

// AdvertisedSize is the message size limit the upstream advertised (RFC 1870 SIZE) on the latest
// connection, 0 when it advertised none or no connection was made yet. Submission checks composed
// messages against it at DATA, so an oversize message is refused to the agent (552) rather than
// bounced after it was accepted.
func (t *Transport) AdvertisedSize() int64 { return t.advertisedSize.Load() }

// New validates o, applies the defaults (see Options) and returns a Transport. It does not connect:
// use Probe to check the server.
func New(o Options) (*Transport, error) {
	if err := o.setDefaults(); err != nil {
		return nil, fmt.Errorf("smtp upstream %q: %w", o.Name, err)
	}
	m := o.Metrics
	if m == nil {
		m = metrics.New(prometheus.NewRegistry())
	}
	budgets := o.Budgets
	if budgets == nil {
		budgets = NewBudgets()
	}
	addr := net.JoinHostPort(o.Host, strconv.Itoa(o.Port))
	t := &Transport{
		o:           o,
		addr:        addr,
		m:           m,
		b:           budgets.budget(&o),
		shapingWait: m.ShapingWait.WithLabelValues(o.Name),
		fingerprint: strings.Join([]string{addr, string(o.TLS), o.TLSServerName, o.HeloName, string(o.Auth), o.Username, o.Mailbox, fmt.Sprint(o.DisableChunking)}, "\x00"),
	}
	t.b.mu.Lock()
	t.b.users[t.fingerprint]++
	t.b.mu.Unlock()
	return t, nil
}

// MaxConnections is how many connections the transport opens at most (its slots, defaults applied):
// the queue gives it no more workers than this.
func (t *Transport) MaxConnections() int { return t.o.MaxConnections }

// Name is the server's name as configured (for logs and the queue's routing).
func (t *Transport) Name() string { return t.o.Name }

// Deliver sends m to the upstream in one SMTP transaction. Result.Errs is aligned with m.Recipients:
// RCPT refusals are per recipient, connection, TLS, AUTH and DATA failures apply to every recipient
// still pending. Result.Reply is the upstream's final reply on success.
func (t *Transport) Deliver(ctx context.Context, m *relay.Message) relay.Result {
	n := len(m.Recipients)
	res := relay.Result{Errs: make([]error, n)}
	if n == 0 {
		return res
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}

	if err := t.precheck(m); err != nil {
		failAll(res.Errs, all, err)
		t.logFailure(m, err)
		return res
	}

	// Recipients per day: send what the budget allows now, defer the rest.
	granted, dayStamp, dayWait, err := t.b.reserveRecipients(ctx, n)
	if err != nil {
		failAll(res.Errs, all, err)
		return res
	}
	if granted < n {
		failAll(res.Errs, all[granted:], &relay.Error{Code: 451, Enhanced: "4.7.0", Reason: ReasonRateLimited, RetryAfter: dayWait,
			Msg: fmt.Sprintf("recipients-per-day limit (%d) of upstream %s reached; deferred", t.o.RecipientsPerDay, t.o.Name)})
	}
	idx := all[:granted]
	if len(idx) == 0 {
		return res
	}
	minuteStamp, err := t.waitRate(ctx)
	if err != nil {
		t.b.refund(len(idx), dayStamp, 0)
		failAll(res.Errs, idx, err)
		return res
	}
	refund := func() {
		failed := 0
		for _, i := range idx {
			if res.Errs[i] != nil {
				failed++
			}
		}
		sent := minuteStamp
		if failed < len(idx) {
			sent = 0 // a message went: its place in the minute stays taken
		}
		t.b.refund(failed, dayStamp, sent)
	}

	if err := t.b.acquire(ctx); err != nil {
		failAll(res.Errs, idx, t.classify(err, relay.StageConnect))
		refund()
		return res
	}
	defer t.b.release()

	if m.Open == nil {
		failAll(res.Errs, idx, &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal, Msg: "message body unavailable"})
		refund()
		return res
	}
	body, err := m.Open()
	if err != nil {
		failAll(res.Errs, idx, &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal, Msg: "cannot read the queued message", Err: err})
		refund()
		return res
	}
	defer body.Close()

	for attempt := 0; ; attempt++ {
		// The retry after a dead pooled session dials afresh: the other idle sessions most likely died
		// with it (an upstream restart or idle timeout closes them all), and were dropped below.
		s, reused, err := t.session(ctx, m.ForceTLS, attempt > 0)
		if err != nil {
			failAll(res.Errs, idx, err)
			t.logFailure(m, err)
			break
		}
		reply, healthy, stale := t.transact(ctx, s, m, body, idx, &res)
		if stale && attempt == 0 && reused {
			t.o.Logger.Debug("pooled upstream connection was dead; reconnecting", "server", t.o.Name, "queue_id", m.QueueID)
			t.drop(s, false)
			t.dropIdle(s.pooledAt)
			for _, i := range idx {
				res.Errs[i] = nil
			}
			continue
		}
		if healthy && ctx.Err() == nil {
			t.put(s)
		} else {
			t.o.Logger.Debug("upstream connection closed", "server", t.o.Name, "why", "error", "queue_id", m.QueueID)
			t.drop(s, false)
		}
		res.Reply = reply
		for _, i := range idx {
			if res.Errs[i] != nil {
				t.noteFailure(m, res.Errs[i])
			}
		}
		break
	}
	refund()
	t.remedies(res.Errs)
	return res
}

// remedies puts the operator's remedy on the errors an operator must act on (setup and Force TLS
// faults), for the queue's alert and /readyz.
func (t *Transport) remedies(errs []error) {
	for _, err := range errs {
		if re, ok := relay.AsError(err); ok && re.Remedy == "" && relay.Classify(re).Alerts() {
			re.Remedy = t.remedy(re)
		}
	}
}

// precheck refuses what needs no connection: a closed transport, a paused server, a message too big.
func (t *Transport) precheck(m *relay.Message) error {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	wait, until := t.b.limits.PausedFor(time.Now())
	if closed {
		return &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal, Msg: "transport is shutting down"}
	}
	if wait > 0 {
		return &relay.Error{Code: 451, Enhanced: "4.2.0", Reason: ReasonQuota, RetryAfter: wait,
			Msg: fmt.Sprintf("upstream %s paused after a quota reply until %s", t.o.Name, until.UTC().Format(time.RFC3339))}
	}
	if t.o.MaxMessageBytes > 0 && m.Size > t.o.MaxMessageBytes {
		return &relay.Error{Code: 552, Enhanced: relay.CodeTooBig, Reason: ReasonSize,
			Msg: fmt.Sprintf("message size %d exceeds the limit %d of upstream %s", m.Size, t.o.MaxMessageBytes, t.o.Name)}
	}
	return nil
}

// waitRate takes one message from the per-minute budget, waiting up to MaxShapingWait (and never past
// ctx's deadline); longer waits become a deferral with RetryAfter, so queue workers are not parked.
func (t *Transport) waitRate(ctx context.Context) (int64, error) {
	started := time.Now()
	stamp, wait, ok, err := t.b.waitMessage(ctx, t.o.MaxShapingWait)
	if ok {
		t.shapingWait.Observe(time.Since(started).Seconds())
	}
	switch {
	case err != nil:
		return 0, t.classify(err, relay.StageConnect)
	case !ok:
		return 0, &relay.Error{Code: 451, Enhanced: "4.7.0", Reason: ReasonRateLimited, RetryAfter: wait,
			Msg: fmt.Sprintf("messages-per-minute limit (%d) of upstream %s reached; deferred", t.o.MessagesPerMinute, t.o.Name)}
	}
	return stamp, nil
}

// session returns a pooled session (most recently used first) or dials a new one; fresh skips the pool.
// The pool is the identity's (budget), shared with the Transports a reload builds: a session set up by
// the same settings (fingerprint) is reused, any other is closed before a new one is
// dialled, so the connections open to the mailbox never exceed its slots across a reload either.
func (t *Transport) session(ctx context.Context, forceTLS, fresh bool) (*session, bool, error) {
	for !fresh {
		t.b.mu.Lock()
		var s *session
		if k := len(t.b.idle); k > 0 {
			s, t.b.idle = t.b.idle[k-1], t.b.idle[:k-1]
		}
		t.b.mu.Unlock()
		if s == nil {
			break
		}
		s.timer.Stop()
		if s.fingerprint != t.fingerprint {
			t.o.Logger.Debug("upstream connection closed", "server", t.o.Name, "why", "settings changed")
			t.drop(s, true)
			continue
		}
		if forceTLS && s.tlsProblem(t.o.TLSServerName) != "" {
			// This session was set up opportunistically; judge Force TLS on a fresh one.
			t.drop(s, true)
			break
		}
		t.o.Logger.Debug("upstream connection reused", "server", t.o.Name, "uses", s.uses)
		return s, true, nil
	}
	// With a fleet, every open connection holds one of the mailbox's slots across the instances.
	lease, err := t.b.lease(ctx)
	if err != nil {
		return nil, false, t.classify(err, relay.StageConnect)
	}
	s, err := t.dial(ctx, forceTLS, true)
	if errors.Is(err, errHandshake) {
		t.o.Logger.Warn("upstream STARTTLS handshake failed; falling back to plain text (no Force TLS, no credentials)",
			"server", t.o.Name, "err", err, "remedy", "fix the upstream's TLS configuration")
		s, err = t.dial(ctx, forceTLS, false)
		if s != nil {
			s.fellBack = true
		}
	}
	if err != nil {
		t.b.unlease(lease)
		stage := relay.StageConnect
		if re, ok := relay.AsError(err); ok && re.Stage != "" {
			stage = re.Stage
		}
		t.m.UpstreamFailures.WithLabelValues(t.o.Name, string(stage)).Inc()
		return nil, false, err
	}
	s.lease = lease
	tlsv := ""
	if s.tlsVersion != 0 {
		tlsv = tlsVersionName(s.tlsVersion)
	}
	t.o.Logger.Debug("upstream connection opened", "server", t.o.Name, "addr", t.addr, "tls", s.tlsMode,
		"tls_version", tlsv, "cert_verified", s.tlsMode != tlsNone && s.certErr == nil, "auth", s.authMech)
	return s, false, nil
}

// put returns a healthy session to the identity's pool, to be closed if unused for IdleTimeout.
func (t *Transport) put(s *session) {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	if closed || t.b.mustClose(s) { // another instance is due its slot, or its lease lapsed
		t.drop(s, true)
		return
	}
	t.b.mu.Lock()
	t.b.idle = append(t.b.idle, s)
	s.pooledAt = time.Now()
	s.timer = time.AfterFunc(t.o.IdleTimeout, func() { t.expire(s) })
	t.b.mu.Unlock()
}

// takeIdle removes from the pool the idle sessions for which match holds, and returns them.
func (t *Transport) takeIdle(match func(*session) bool) []*session {
	t.b.mu.Lock()
	defer t.b.mu.Unlock()
	var taken, keep []*session
	for _, x := range t.b.idle {
		if match(x) {
			taken = append(taken, x)
		} else {
			keep = append(keep, x)
		}
	}
	t.b.idle = keep
	return taken
}

// dropIdle closes the idle sessions pooled no later than before: when one pooled session is found
// dead, those pooled with or before it are presumed dead too, so no later delivery trips over them.
func (t *Transport) dropIdle(before time.Time) {
	dead := t.takeIdle(func(x *session) bool { return !x.pooledAt.After(before) })
	for _, x := range dead {
		x.timer.Stop()
		t.drop(x, false)
	}
	if len(dead) > 0 {
		t.o.Logger.Debug("idle upstream connections dropped after a dead one", "server", t.o.Name, "count", len(dead))
	}
}

// expire closes s if it is still idle in the pool.
func (t *Transport) expire(s *session) {
	if len(t.takeIdle(func(x *session) bool { return x == s })) > 0 {
		t.o.Logger.Debug("upstream connection closed", "server", t.o.Name, "why", "idle")
		t.drop(s, true)
	}
}

// drop ends a session: QUIT (briefly) when it is healthy, a plain close otherwise.
func (t *Transport) drop(s *session, quit bool) {
	defer t.b.unlease(s.lease)
	if s.c == nil {
		return
	}
	if quit {
		s.c.CommandTimeout = min(s.c.CommandTimeout, 5*time.Second)
		if s.c.Quit() == nil {
			return
		}
	}
	s.c.Close()
}

// failAll gives every recipient in idx the outcome err (errs is a relay.Result's Errs).
func failAll(errs []error, idx []int, err error) {
	for _, i := range idx {
		errs[i] = err
	}
}

// copyBody streams the queued message into w: the dot-stuffing DATA writer (size < 0: to the end of
// the body), or a BDAT chunk that announced exactly size bytes. It never lets a message it could not
// read whole be finished: on any failure the connection is closed, so the server discards the
// transaction (RFC 5321 §4.1.1.4) — or, for BDAT, never takes a short chunk for the message — instead
// of delivering a truncated one. local says the failure was reading the spool, not writing to the
// server.
func (t *Transport) copyBody(s *session, w io.Writer, body io.Reader, size int64) (re *relay.Error, local bool) {
	rt := &readTracker{r: body}
	if size >= 0 {
		rt.r = io.LimitReader(body, size)
	}
	n, err := io.CopyBuffer(w, rt, s.copyBuf)
	if err == nil && size >= 0 && n < size {
		rt.err = fmt.Errorf("queued message ended after %d of %d bytes", n, size)
	}
	if err == nil && rt.err == nil {
		return nil, false
	}
	s.conn.Close()
	if rt.err != nil {
		return &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal,
			Msg: "cannot read the queued message", Err: rt.err}, true
	}
	return t.classify(err, relay.StageData), false
}

// checkQuota pauses the server after a quota reply until the daily window frees up (our own record of
// recipients sent; QuotaPause when we have none), and puts that wait on the error.
func (t *Transport) checkQuota(re *relay.Error) {
	if re == nil || re.Reason != ReasonQuota {
		return
	}
	re.RetryAfter = t.b.limits.PauseForQuota(time.Now(), t.o.QuotaPause)
}

type readTracker struct {
	r   io.Reader
	err error
}

func (r *readTracker) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

func isSMTPReply(err error) bool {
	var se *gosmtp.SMTPError
	return errors.As(err, &se)
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// noteFailure logs, at warn with the remedy, the failures an operator must act on; ordinary recipient
// refusals are the queue's to log (as bounced/deferred).
func (t *Transport) noteFailure(m *relay.Message, err error) {
	re, ok := relay.AsError(err)
	if !ok {
		return
	}
	switch re.Reason {
	case ReasonUpstreamAuth, ReasonTLSRequired, ReasonQuota, ReasonThrottled, ReasonNetwork, ReasonLocal:
		t.logFailure(m, err)
	}
}

func (t *Transport) logFailure(m *relay.Message, err error) {
	re, ok := relay.AsError(err)
	if !ok {
		t.o.Logger.Warn("upstream delivery failed", "server", t.o.Name, "queue_id", m.QueueID, "err", err)
		return
	}
	attrs := []any{"server", t.o.Name, "queue_id", m.QueueID, "code", re.Code, "enhanced", string(re.Enhanced),
		"reason", re.Reason, "err", re.Error()}
	if re.RetryAfter > 0 {
		attrs = append(attrs, "retry_after", re.RetryAfter.Round(time.Second).String())
	}
	if r := t.remedy(re); r != "" {
		attrs = append(attrs, "remedy", r)
	}
	t.o.Logger.Warn("upstream delivery failed", attrs...)
}

// Close refuses further deliveries (in-flight ones finish) and, unless another open Transport was set
// up with the same settings (a reload's successor, which reuses them), ends the idle sessions of t's
// settings (QUIT).
func (t *Transport) Close() error {
	t.mu.Lock()
	already := t.closed
	t.closed = true
	t.mu.Unlock()
	if already {
		return nil
	}
	t.b.mu.Lock()
	t.b.users[t.fingerprint]--
	last := t.b.users[t.fingerprint] <= 0
	if last {
		delete(t.b.users, t.fingerprint)
	}
	t.b.mu.Unlock()
	if !last {
		return nil
	}
	for _, s := range t.takeIdle(func(x *session) bool { return x.fingerprint == t.fingerprint }) {
		s.timer.Stop()
		t.drop(s, true)
	}
	return nil
}
