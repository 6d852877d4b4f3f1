package smtp

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/auth/xoauth2"
	"github.com/mailgate/mailgate/relay"
)

// TLS labels, as used in the UpstreamConnections metric and the probe report.
const (
	tlsNone     = "none"
	tlsStartTLS = "starttls"
	tlsImplicit = "implicit"
)

// session is one connection to the upstream, set up (TLS, EHLO, AUTH) and ready for transactions.
type session struct {
	c    *gosmtp.Client
	conn net.Conn // the deadline-wrapped TCP connection; closing it ends the session at once

	tlsMode     string // tlsNone, tlsStartTLS, tlsImplicit
	tlsVersion  uint16
	certErr     error  // nil when the certificate verified for TLSServerName
	startTLSErr string // the server's refusal of STARTTLS, when it refused
	banner      string
	mechs       []string // AUTH mechanisms offered on the session used (after STARTTLS)
	maxSize     int64    // SIZE (RFC 1870 §4); 0 = not advertised or unlimited
	smtputf8    bool
	authMech    string
	tokenFail   *xoauth2.Failure
	fellBack    bool // opportunistic STARTTLS failed and this session is in plain text

	// base is the connection under go-smtp's client (TLS when in use); tp is the session's own text
	// connection on it, for pipelined transactions. pipelining, ext8bit, extSize and chunking are what EHLO
	// offered.
	base                         net.Conn
	tp                           *textproto.Conn
	pipelining, ext8bit, extSize bool
	chunking                     bool // CHUNKING (RFC 3030): BDAT instead of DATA, with pipelining
	// bodyW and copyBuf carry message bodies (see bodyWriter); made on first use and kept with the
	// session, so a pooled session sends message after message without allocating.
	bodyW   *bufio.Writer
	copyBuf []byte

	fingerprint string // the settings it was set up with (Transport.fingerprint)

	uses     int         // messages sent on it
	timer    *time.Timer // idle expiry while pooled
	pooledAt time.Time   // when it last went into the pool
	lease    int64       // the fleet slot it holds (0: no fleet)
}

// bodySegment is the write buffer for DATA bodies: a typical reply (tens of KiB) and its end-of-data
// line leave in one write, where textproto's 4 KiB writer made three or more system calls.
const bodySegment = 64 << 10

// bodyWriter is the session's buffered writer for DATA bodies, on base. The command writer (tp.W) is
// always flushed before a body starts, so the two never interleave.
func (s *session) bodyWriter() *bufio.Writer {
	if s.bodyW == nil {
		s.bodyW = bufio.NewWriterSize(s.base, bodySegment)
		s.copyBuf = make([]byte, 32<<10)
	}
	return s.bodyW
}

// tlsProblem says why the session does not satisfy Force TLS (TLS ≥ 1.2 with a certificate verified
// for the server's name), or "" when it does.
func (s *session) tlsProblem(name string) string {
	switch {
	case s.tlsMode == tlsNone && s.startTLSErr != "":
		return "refused STARTTLS (" + s.startTLSErr + ")"
	case s.tlsMode == tlsNone && s.fellBack:
		return "could not complete a TLS handshake"
	case s.tlsMode == tlsNone:
		return "does not offer STARTTLS"
	case s.tlsVersion < tls.VersionTLS12:
		return "negotiated " + tls.VersionName(s.tlsVersion) + ", below TLS 1.2"
	case s.certErr != nil:
		return "presented a certificate not verified for " + name + " (" + s.certErr.Error() + ")"
	}
	return ""
}

// deadlineConn gives every write its own deadline, so that a DATA transfer to a server that stops
// reading fails after DataTimeout without progress (RFC 5321 §4.5.3.2.5, "data block: 3 minutes"):
// go-smtp sets deadlines around commands but none while the body is written.
type deadlineConn struct {
	net.Conn
	writeTimeout time.Duration
}

func (d *deadlineConn) Write(p []byte) (int, error) {
	if err := d.Conn.SetWriteDeadline(time.Now().Add(d.writeTimeout)); err != nil {
		return 0, err
	}
	return d.Conn.Write(p)
}

// resumedConn hands go-smtp's client a synthetic greeting before the real stream: mailgate reads the
// banner and does STARTTLS itself (go-smtp exports no StartTLS, and its NewClientStartTLS would say
// EHLO localhost and leave the handshake for later), then lets go-smtp run the session from its
// post-TLS EHLO on.
type resumedConn struct {
	net.Conn
	pending []byte
}

func (r *resumedConn) Read(p []byte) (int, error) {
	if len(r.pending) > 0 {
		n := copy(p, r.pending)
		r.pending = r.pending[n:]
		return n, nil
	}
	return r.Conn.Read(p)
}

// errHandshake marks an opportunistic STARTTLS handshake that failed for a reason other than the
// network; the caller may reconnect in plain text.
var errHandshake = errors.New("opportunistic TLS handshake failed")

// dial opens and sets up a new session. The returned session is non-nil even on error, carrying what
// was learnt (banner, TLS facts) for Probe. allowTLS=false skips STARTTLS (the plain-text fallback).
func (t *Transport) dial(ctx context.Context, forceTLS, allowTLS bool) (*session, error) {
	o := &t.o
	s := &session{tlsMode: tlsNone, fingerprint: t.fingerprint}
	d := net.Dialer{Timeout: o.DialTimeout}
	raw, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return s, t.classify(err, relay.StageConnect)
	}
	dc := &deadlineConn{Conn: raw, writeTimeout: o.DataTimeout}
	s.conn = dc
	stop := context.AfterFunc(ctx, func() { dc.Close() })
	defer stop()
	fail := func(err error) (*session, error) {
		dc.Close()
		s.conn, s.c = nil, nil
		return s, err
	}
	creds := o.Auth != AuthNone

	var base net.Conn = dc
	if o.TLS == TLSImplicit {
		tc, err := t.handshake(ctx, dc, s, creds)
		if err != nil {
			return fail(t.tlsFailure(s, err, forceTLS, creds))
		}
		s.tlsMode, base = tlsImplicit, tc
	}

	tp := textproto.NewConn(base)
	_ = base.SetDeadline(time.Now().Add(o.CommandTimeout))
	code, msg, err := tp.ReadResponse(220)
	if err != nil {
		return fail(t.greetingFailure(err))
	}
	s.banner = strconv.Itoa(code) + " " + oneLine(msg)

	if o.TLS == TLSStartTLS && allowTLS {
		ext, err := ehlo(tp, o.HeloName)
		if err != nil && !isReply(err, 500, 502) { // 500/502: no EHLO, so no STARTTLS (RFC 5321 §4.1.4)
			return fail(t.classify(err, relay.StageConnect))
		}
		if _, ok := ext["STARTTLS"]; ok {
			if _, _, err := command(tp, 220, "STARTTLS"); err != nil {
				var se *gosmtp.SMTPError
				if !errors.As(err, &se) {
					return fail(t.classify(err, relay.StageTLS))
				}
				s.startTLSErr = fmt.Sprintf("%d %s", se.Code, oneLine(se.Message)) // e.g. 454: go on in plain text
			} else {
				if tp.R.Buffered() > 0 {
					// Bytes pipelined after the 220 would be read as if they came over TLS: the STARTTLS
					// command injection of RFC 3207 §6 (CVE-2011-0411 in the server direction).
					return fail(t.tlsFailure(s, errors.New("server sent data after its STARTTLS reply"), forceTLS, creds))
				}
				tc, err := t.handshake(ctx, dc, s, creds)
				if err != nil {
					ferr := t.tlsFailure(s, err, forceTLS, creds)
					if !forceTLS && !creds && !isTransientNetwork(err) {
						ferr = fmt.Errorf("%w: %w", errHandshake, ferr)
					}
					return fail(ferr)
				}
				s.tlsMode, base = tlsStartTLS, tc
			}
		}
	}
	_ = base.SetDeadline(time.Time{})

	s.c = gosmtp.NewClient(&resumedConn{Conn: base, pending: []byte("220 session resumed\r\n")})
	s.c.CommandTimeout = o.CommandTimeout
	s.c.SubmissionTimeout = o.FinalReplyTimeout
	if err := s.c.Hello(o.HeloName); err != nil {
		return fail(t.classify(err, relay.StageConnect))
	}
	if ok, mechs := s.c.Extension("AUTH"); ok {
		s.mechs = strings.Fields(strings.ToUpper(mechs))
	}
	if size, ok := s.c.MaxMessageSize(); ok {
		s.maxSize = int64(size)
	}
	t.advertisedSize.Store(s.maxSize)
	s.smtputf8, _ = s.c.Extension("SMTPUTF8")
	s.base = base
	s.pipelining, _ = s.c.Extension("PIPELINING")
	s.ext8bit, _ = s.c.Extension("8BITMIME")
	s.extSize, _ = s.c.Extension("SIZE")
	s.chunking, _ = s.c.Extension("CHUNKING")
	s.chunking = s.chunking && !o.DisableChunking
	if t.m != nil {
		t.m.UpstreamConnections.WithLabelValues(o.Name, s.tlsMode).Inc()
	}

	// Force TLS first: its failure is permanent and must win over any other finding.
	if forceTLS {
		if p := s.tlsProblem(o.TLSServerName); p != "" {
			return fail(t.tlsRequired(p, s.certErr))
		}
	}
	if creds {
		// Credentials only over TLS with a verified certificate: a man in the middle must get neither
		// the password nor a bearer token (RFC 4954 §4 leaves this to the client; we refuse).
		if s.tlsMode == tlsNone {
			return fail(t.authError("offers no TLS ("+s.tlsProblem(o.TLSServerName)+"); credentials are never sent without TLS", nil))
		}
		if err := t.authenticate(ctx, s); err != nil {
			return fail(err)
		}
	}
	return s, nil
}

// handshake runs the TLS handshake at once (not lazily at the next command), bounded by DialTimeout.
func (t *Transport) handshake(ctx context.Context, dc net.Conn, s *session, strict bool) (*tls.Conn, error) {
	tc := tls.Client(dc, t.tlsConfig(s, strict))
	_ = dc.SetDeadline(time.Now().Add(t.o.DialTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	_ = dc.SetDeadline(time.Time{})
	s.tlsVersion = tc.ConnectionState().Version
	return tc, nil
}

// tlsConfig verifies the certificate itself so that an unverified certificate can be recorded rather
// than fatal in opportunistic mode (Postfix "may" accepts it: encryption without authentication still
// beats plain text). With strict (credentials will be sent) an unverified certificate aborts the
// handshake. Force TLS is judged afterwards from the recorded result.
func (t *Transport) tlsConfig(s *session, strict bool) *tls.Config {
	roots := t.o.RootCAs
	name := t.o.TLSServerName
	return &tls.Config{
		ServerName:         name,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verification is done in VerifyConnection below, never skipped
		VerifyConnection: func(cs tls.ConnectionState) error {
			s.certErr = verifyPeer(cs, name, roots)
			if strict {
				return s.certErr
			}
			return nil
		},
	}
}

func verifyPeer(cs tls.ConnectionState, name string, roots *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no certificate presented")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter})
	return err
}

// tlsFailure classifies a failed TLS handshake: under Force TLS a refusal or a bad certificate is
// permanent (the channel demands TLS and the next hop cannot give it); a timeout or a reset is worth a
// retry; with credentials it is the relay's configuration problem (temporary).
func (t *Transport) tlsFailure(s *session, err error, forceTLS, creds bool) error {
	what := "TLS handshake failed (" + err.Error() + ")"
	if s.certErr != nil {
		what = "presented a certificate not verified for " + t.o.TLSServerName + " (" + s.certErr.Error() + ")"
	}
	switch {
	case isTransientNetwork(err):
		return t.classify(err, relay.StageTLS)
	case forceTLS:
		return t.tlsRequired(what, err)
	case creds:
		return t.authError(what+"; credentials not sent", err)
	default:
		return &relay.Error{Code: 451, Enhanced: relay.CodeTempNetwork, Reason: ReasonNetwork,
			Msg: fmt.Sprintf("upstream %s %s", t.o.Name, what), Err: err}
	}
}

// greetingFailure: a server that refuses us at connect (421, 554 banner) is the relay's problem, not
// the recipients': always temporary.
func (t *Transport) greetingFailure(err error) error {
	var se *gosmtp.SMTPError
	if !errors.As(protoErr(err), &se) {
		return t.classify(err, relay.StageConnect)
	}
	if se.Code >= 400 && se.Code < 500 {
		return t.replyError(se, relay.StageConnect)
	}
	return &relay.Error{Code: 451, Enhanced: relay.CodeTempNetwork, Reason: ReasonUpstream,
		Msg: fmt.Sprintf("upstream %s refused the connection: %d %s", t.o.Name, se.Code, oneLine(se.Message)), Err: se}
}

// authenticate runs SMTP AUTH (RFC 4954) with the configured mechanism.
func (t *Transport) authenticate(ctx context.Context, s *session) error {
	o := &t.o
	switch o.Auth {
	case AuthLogin, AuthPlain:
		prefs := []string{sasl.Login, sasl.Plain}
		if o.Auth == AuthPlain {
			prefs = []string{sasl.Plain, sasl.Login}
		}
		mech := ""
		for _, p := range prefs {
			if slices.Contains(s.mechs, p) {
				mech = p
				break
			}
		}
		if mech == "" {
			return t.authError(fmt.Sprintf("offers neither AUTH LOGIN nor PLAIN (offered: %s)", mechList(s.mechs)), nil)
		}
		var client sasl.Client = sasl.NewLoginClient(o.Username, o.Password)
		if mech == sasl.Plain {
			client = sasl.NewPlainClient("", o.Username, o.Password)
		}
		s.authMech = mech
		if err := s.c.Auth(client); err != nil {
			return t.authFailure(err)
		}
		return nil
	case AuthXOAUTH2:
		if !slices.Contains(s.mechs, xoauth2.Mechanism) {
			return t.authError(fmt.Sprintf("does not offer AUTH XOAUTH2 (offered: %s)", mechList(s.mechs)), nil)
		}
		s.authMech = xoauth2.Mechanism
		for attempt := 0; ; attempt++ {
			token, err := o.Tokens.Token(ctx)
			if err != nil {
				msg := "no OAuth access token"
				if re, ok := relay.AsError(err); ok {
					msg += " (" + re.Msg + ")"
				}
				return t.authError(msg, err)
			}
			xc := xoauth2.NewClient(o.Mailbox, token)
			err = s.c.Auth(xc)
			if err == nil {
				s.tokenFail = nil
				return nil
			}
			s.tokenFail = xc.Failure()
			var se *gosmtp.SMTPError
			// A 535 usually means the token expired or was revoked: drop it and try once with a fresh one.
			// 5.7.139 (SMTP AUTH disabled for the tenant) is not about the token: no retry, no refresh.
			if attempt == 0 && errors.As(err, &se) && se.Code == 535 && enhancedOf(se) != "5.7.139" {
				o.Tokens.Invalidate(token)
				o.Logger.Debug("upstream refused the access token; retrying with a fresh one",
					"server", o.Name, "token_status", s.tokenFail.String())
				continue
			}
			return t.authFailure(err)
		}
	}
	return nil
}

func (t *Transport) authFailure(err error) error {
	var se *gosmtp.SMTPError
	if errors.As(err, &se) {
		return t.replyError(se, relay.StageAuth)
	}
	var ne net.Error
	if errors.As(err, &ne) || isTimeout(err) {
		return t.classify(err, relay.StageAuth)
	}
	// A SASL-level failure (unexpected challenge): go-smtp has cancelled the exchange with "*".
	return t.authError("AUTH exchange failed", err)
}

func mechList(m []string) string {
	if len(m) == 0 {
		return "none"
	}
	return strings.Join(m, " ")
}

// ehlo sends EHLO on the pre-TLS connection and returns the extension keywords (RFC 5321 §4.1.1.1).
func ehlo(tp *textproto.Conn, helo string) (map[string]string, error) {
	_, msg, err := command(tp, 250, "EHLO %s", helo)
	if err != nil {
		return nil, err
	}
	ext := map[string]string{}
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		ext[strings.ToUpper(k)] = v
	}
	return ext, nil
}

func command(tp *textproto.Conn, expect int, format string, args ...any) (int, string, error) {
	id, err := tp.Cmd(format, args...)
	if err != nil {
		return 0, "", err
	}
	tp.StartResponse(id)
	defer tp.EndResponse(id)
	code, msg, err := tp.ReadResponse(expect)
	return code, msg, protoErr(err)
}

// protoErr turns a textproto reply error into the *gosmtp.SMTPError go-smtp itself would return.
func protoErr(err error) error {
	var pe *textproto.Error
	if !errors.As(err, &pe) {
		return err
	}
	se := &gosmtp.SMTPError{Code: pe.Code, Message: pe.Msg}
	if first, rest, ok := strings.Cut(pe.Msg, " "); ok {
		if p, ok := relay.EnhancedCode(first).Parts(); ok && p[0] == pe.Code/100 {
			se.EnhancedCode = gosmtp.EnhancedCode(p)
			se.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
		}
	}
	return se
}

func isReply(err error, codes ...int) bool {
	var se *gosmtp.SMTPError
	return errors.As(err, &se) && slices.Contains(codes, se.Code)
}
