package submit

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/auth"
)

// Server is the submission server: its listeners, the connection limit, the failed-AUTH limiter and
// the current Rules.
type Server struct {
	o       Options
	rules   atomic.Pointer[Rules]
	limiter *auth.Limiter
	slots   chan struct{} // one token per open connection
	log     *slog.Logger
	// bufs recycles the copy buffers of receive: one per message in flight instead of one per message.
	bufs sync.Pool
	// raws recycles the in-memory raw messages (rawMessage) between DATA and composition.
	raws sync.Pool
	// headerReaders recycles the buffered readers the submitted header is parsed through.
	headerReaders sync.Pool

	listeners []*listener

	mu       sync.Mutex
	conns    map[*trackedConn]struct{} // open connections, closed by Close after a graceful wait
	byClient map[netip.Addr]int        // open connections per client (IPv6 by /64)

	// ctx is cancelled by Close: it bounds the processing of messages in flight.
	ctx    context.Context
	cancel context.CancelFunc

	closeOnce sync.Once
}

type listener struct {
	cfg  Listener
	ln   net.Listener // what go-smtp accepts from (TLS-wrapped for implicit mode)
	addr net.Addr
	smtp *smtp.Server
}

// New validates the options, binds every listener (so "address in use" is reported here and Addr is
// known before Serve) and returns a server that is not yet accepting connections.
func New(o Options, rules *Rules) (*Server, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if rules == nil {
		return nil, errors.New("submit: no rules")
	}
	s := &Server{
		o:        o,
		conns:    make(map[*trackedConn]struct{}),
		byClient: make(map[netip.Addr]int),
		slots:    make(chan struct{}, o.MaxConnections),
		log:      o.Logger,
		limiter: auth.NewLimiter(auth.LimiterOptions{
			MaxFailures: o.AuthFailures, MaxClientFailures: o.AuthClientFailures, Window: o.AuthWindow,
			MaxClients: o.AuthClients,
		}),
	}
	s.rules.Store(rules)
	s.ctx, s.cancel = context.WithCancel(context.Background())

	for _, lc := range o.Listeners {
		// No TCP keepalive: the idle timeout already ends silent sessions, and Go would otherwise
		// spend four setsockopt calls on every accepted connection (one per message from most clients).
		tcp, err := (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", lc.Address)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("submit: listener %s: %w", lc.Name, err)
		}
		if ta, ok := tcp.Addr().(*net.TCPAddr); lc.AllowInsecureAuth && (!ok || !ta.IP.IsLoopback()) {
			// Passwords in clear text are tolerable only where they never leave the machine.
			_ = tcp.Close()
			s.Close()
			return nil, fmt.Errorf("submit: listener %s: insecure AUTH is only allowed on a loopback address, not %s", lc.Name, tcp.Addr())
		}
		l := &listener{cfg: lc, addr: tcp.Addr()}
		var ln net.Listener = &limitListener{Listener: tcp, srv: s, name: lc.Name, implicitTLS: lc.Mode == ModeImplicit}
		if lc.Mode == ModeImplicit {
			ln = tls.NewListener(ln, o.TLSConfig)
		}
		l.ln = ln

		ss := smtp.NewServer(&backend{srv: s, listener: lc.Name})
		ss.Domain = o.Hostname
		ss.TLSConfig = o.TLSConfig
		ss.MaxMessageBytes = o.MaxMessageBytes
		// The recipient limit is the session's (it does not count a repeated recipient twice, go-smtp
		// would).
		ss.AllowInsecureAuth = lc.AllowInsecureAuth
		// go-smtp sets a read deadline once per command line from ReadTimeout: trackedConn takes it as
		// the command line's time limit and applies its own rules in DATA, where go-smtp's deadline
		// would expire in the middle of a long upload. Writes get the idle timeout per write.
		ss.ReadTimeout, ss.WriteTimeout = o.CommandTimeout, 0
		ss.ErrorLog = errorLog{log: s.log, listener: lc.Name}
		l.smtp = ss
		s.listeners = append(s.listeners, l)
	}
	return s, nil
}

func (o *Options) defaults() error {
	var errs []error
	if o.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		o.Hostname = h
	}
	if o.MaxConnections <= 0 {
		o.MaxConnections = 200
	}
	if o.MaxConnectionsPerClient <= 0 || o.MaxConnectionsPerClient > o.MaxConnections {
		o.MaxConnectionsPerClient = o.MaxConnections
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = 50 << 20
	}
	if o.MaxRecipients <= 0 {
		o.MaxRecipients = 100
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 5 * time.Minute
	}
	if o.AuthTimeout <= 0 {
		o.AuthTimeout = time.Minute
	}
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = 5 * time.Minute
	}
	if o.DataMinRate <= 0 {
		o.DataMinRate = 500
	}
	if o.DataRateWindow < time.Second {
		o.DataRateWindow = 30 * time.Second
	}
	if o.ProcessTimeout <= 0 {
		o.ProcessTimeout = 2 * time.Minute
	}
	if o.LookupTimeout <= 0 {
		o.LookupTimeout = 10 * time.Second
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 10 * time.Second
	}
	if o.TempDir == "" {
		o.TempDir = os.TempDir()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.CheckPassword == nil {
		o.CheckPassword = (*auth.Directory).Authenticate
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Spool == nil {
		errs = append(errs, errors.New("submit: no spool"))
	}
	if o.Suppressions == nil {
		errs = append(errs, errors.New("submit: no suppression list"))
	}
	if o.Metrics == nil {
		errs = append(errs, errors.New("submit: no metrics"))
	}
	if len(o.Listeners) == 0 {
		errs = append(errs, errors.New("submit: no listeners"))
	}
	if o.TLSConfig != nil {
		c := o.TLSConfig.Clone()
		if c.MinVersion < tls.VersionTLS12 {
			c.MinVersion = tls.VersionTLS12 // RFC 8996 deprecates TLS 1.0 and 1.1
		}
		o.TLSConfig = c
	}
	names := map[string]bool{}
	for i, l := range o.Listeners {
		switch {
		case l.Name == "":
			errs = append(errs, fmt.Errorf("submit: listeners[%d]: name is empty", i))
		case names[l.Name]:
			errs = append(errs, fmt.Errorf("submit: listeners[%d]: duplicate name %q", i, l.Name))
		}
		names[l.Name] = true
		switch l.Mode {
		case ModeImplicit:
			if o.TLSConfig == nil {
				errs = append(errs, fmt.Errorf("submit: listener %s: implicit TLS needs a TLS config", l.Name))
			}
		case ModeStartTLS:
			if o.TLSConfig == nil && !l.AllowInsecureAuth {
				errs = append(errs, fmt.Errorf("submit: listener %s: without a TLS config no client could authenticate", l.Name))
			}
		default:
			errs = append(errs, fmt.Errorf("submit: listener %s: mode %q is not starttls or implicit", l.Name, l.Mode))
		}
	}
	return errors.Join(errs...)
}

// SetRules replaces the policy for every transaction that starts from now on (configuration reload).
func (s *Server) SetRules(r *Rules) {
	if r != nil {
		s.rules.Store(r)
	}
}

// Addr returns the bound address of the named listener (useful with port 0), or nil.
func (s *Server) Addr(name string) net.Addr {
	for _, l := range s.listeners {
		if l.cfg.Name == name {
			return l.addr
		}
	}
	return nil
}

// Serve accepts connections on every listener until ctx ends or a listener fails. When ctx ends it stops
// accepting, lets open sessions finish for up to ShutdownTimeout, then closes the rest. It returns nil
// after a shutdown asked for by ctx, or the first listener error.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, len(s.listeners))
	for _, l := range s.listeners {
		s.log.Info("listening", "listener", l.cfg.Name, "addr", l.addr.String(), "mode", string(l.cfg.Mode),
			"insecure_auth", l.cfg.AllowInsecureAuth)
		go func() { errc <- l.smtp.Serve(l.ln) }()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		if errors.Is(err, net.ErrClosed) || err == nil {
			err = nil // Close was called
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.o.ShutdownTimeout)
	defer cancel()
	s.shutdown(sctx)
	return err
}

func (s *Server) shutdown(ctx context.Context) {
	var wg sync.WaitGroup
	for _, l := range s.listeners {
		wg.Go(func() {
			if err := l.smtp.Shutdown(ctx); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
				l.smtp.Close()
			}
		})
	}
	wg.Wait()
	s.Close()
}

// Close closes every listener and connection at once and cancels messages being processed.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.cancel()
		for _, l := range s.listeners {
			_ = l.smtp.Close()
			_ = l.ln.Close() // when Serve never ran, go-smtp does not know the listener
		}
		// After a Shutdown go-smtp's Close no longer closes connections; close what is left here.
		s.mu.Lock()
		open := make([]*trackedConn, 0, len(s.conns))
		for c := range s.conns {
			open = append(open, c)
		}
		s.mu.Unlock()
		for _, c := range open {
			_ = c.Close()
		}
	})
	return nil
}

// limitListener enforces MaxConnections over all listeners. A connection over the limit is told so and
// closed at once rather than left waiting in the backlog, so clients back off and retry (421 4.3.2,
// RFC 5321 §3.8; RFC 3463 4.3.2 "system not accepting network messages").
type limitListener struct {
	net.Listener
	srv         *Server
	name        string
	implicitTLS bool
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		reason, text := "connection_limit", "Too many connections, try again later"
		select {
		case l.srv.slots <- struct{}{}:
			if t := l.srv.track(c, l.name); t != nil {
				return t, nil
			}
			reason, text = "client_connection_limit", "Too many connections from your address, try again later"
		default:
		}
		l.srv.o.Metrics.MessagesRejected.WithLabelValues("connect", reason).Inc()
		l.srv.log.Warn("rejected", "listener", l.name, "stage", "connect", "reason", reason,
			"remote", c.RemoteAddr().String(), "code", 421)
		// A fresh socket's send buffer takes a short line without blocking; the deadline is a backstop.
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if !l.implicitTLS { // on an implicit-TLS port a plain-text line would be noise to the client
			fmt.Fprintf(c, "421 4.3.2 %s %s\r\n", l.srv.o.Hostname, text)
		}
		_ = c.Close()
	}
}

// track registers an accepted connection that holds a slot. It returns nil, giving the slot back, when
// the client already has MaxConnectionsPerClient connections open.
func (s *Server) track(c net.Conn, listener string) *trackedConn {
	var id [6]byte
	_, _ = rand.Read(id[:])
	t := &trackedConn{Conn: c, srv: s, id: hex.EncodeToString(id[:]), listener: listener,
		authBy: time.Now().Add(s.o.AuthTimeout)}
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		t.remote = ap.Addr().Unmap()
	}
	client := clientKey(t.remote)
	s.mu.Lock()
	if s.byClient[client] >= s.o.MaxConnectionsPerClient {
		s.mu.Unlock()
		<-s.slots
		return nil
	}
	s.byClient[client]++
	s.conns[t] = struct{}{}
	s.mu.Unlock()
	t.release = func() {
		s.mu.Lock()
		delete(s.conns, t)
		if s.byClient[client]--; s.byClient[client] <= 0 {
			delete(s.byClient, client)
		}
		s.mu.Unlock()
		<-s.slots
		s.o.Metrics.SessionsActive.Dec()
	}
	s.o.Metrics.Sessions.WithLabelValues(listener).Inc()
	s.o.Metrics.SessionsActive.Inc()
	return t
}

// trackedConn is one client connection: it holds the session id (kept across STARTTLS, which makes
// go-smtp start a new Session), sets the read deadline of every read, and frees its connection slot
// when closed.
//
// A deadline refreshed per read alone lets a client that sends a byte every few seconds hold a slot
// forever, so every read's deadline is the earliest of:
//   - the idle timeout from now (RFC 5321 §4.5.3.2.7);
//   - until authenticated: connect time + AuthTimeout;
//   - outside DATA/BDAT: the end of the current command line's time. go-smtp sets a read deadline once
//     per command line from its ReadTimeout (= CommandTimeout); that call lands in SetReadDeadline
//     here, so a line dribbled byte by byte is cut when its time is up;
//   - in DATA/BDAT: the end of the current rate window. A window in which fewer than
//     MinRate × window bytes arrived ends the transfer (RFC 5321 §4.5.3.2.5's three minutes per
//     block would let a client keep a slot for days at one byte per block).
//
// A cut is sticky: every later read fails with the same timeout error, go-smtp answers 421 4.4.2 and
// closes the connection.
type trackedConn struct {
	net.Conn
	srv      *Server
	id       string
	listener string
	remote   netip.Addr
	release  func()
	once     sync.Once

	mu          sync.Mutex
	authBy      time.Time // zero once authenticated
	lineBy      time.Time // set by go-smtp per command line; zero in DATA
	inData      bool
	windowStart time.Time
	windowBytes int64
	cut         error // sticky *cutError
}

// cutError is a connection ended for taking too long. It is a net.Error timeout, so go-smtp answers
// 421 4.4.2 when it meets it while reading a command.
type cutError struct{ reason string }

func (e *cutError) Error() string   { return "submit: connection cut: " + e.reason }
func (e *cutError) Timeout() bool   { return true }
func (e *cutError) Temporary() bool { return true }

const (
	cutAuthTimeout    = "auth_timeout"
	cutCommandTimeout = "command_timeout"
	cutDataTooSlow    = "data_too_slow"
)

// SetReadDeadline records go-smtp's per-command-line deadline; Read applies it.
func (c *trackedConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.lineBy = t
	c.mu.Unlock()
	return nil
}

// SetDeadline is SetReadDeadline plus the write deadline (go-smtp sets them apart; kept for net.Conn).
func (c *trackedConn) SetDeadline(t time.Time) error {
	_ = c.SetReadDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

// deadline returns the deadline of the next read and what reaching it means ("" = the idle timeout,
// which is not a cut of ours but the socket's own timeout error). Called with mu held.
func (c *trackedConn) deadline(now time.Time) (time.Time, string) {
	o := &c.srv.o
	dl, cause := now.Add(o.IdleTimeout), ""
	if !c.authBy.IsZero() && c.authBy.Before(dl) {
		dl, cause = c.authBy, cutAuthTimeout
	}
	if c.inData {
		if end := c.windowStart.Add(o.DataRateWindow); end.Before(dl) {
			dl, cause = end, cutDataTooSlow
		}
	} else if !c.lineBy.IsZero() && c.lineBy.Before(dl) {
		dl, cause = c.lineBy, cutCommandTimeout
	}
	return dl, cause
}

func (c *trackedConn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if c.cut != nil {
			c.mu.Unlock()
			return 0, c.cut
		}
		dl, cause := c.deadline(time.Now())
		c.mu.Unlock()
		if err := c.Conn.SetReadDeadline(dl); err != nil {
			return 0, err
		}
		n, err := c.Conn.Read(p)

		c.mu.Lock()
		now := time.Now()
		if c.inData {
			c.windowBytes += int64(n)
			if o := &c.srv.o; !now.Before(c.windowStart.Add(o.DataRateWindow)) {
				if c.windowBytes < o.DataMinRate*int64(o.DataRateWindow/time.Second) {
					c.cutLocked(cutDataTooSlow)
				}
				c.windowStart, c.windowBytes = now, 0
			}
		}
		var ne net.Error
		if err != nil && errors.As(err, &ne) && ne.Timeout() && cause != "" && !now.Before(dl) && cause != cutDataTooSlow {
			c.cutLocked(cause)
		}
		cut := c.cut
		c.mu.Unlock()
		switch {
		case n > 0:
			return n, nil // a cut during this read shows at the next one
		case cut != nil:
			return 0, cut
		case err != nil && errors.As(err, &ne) && ne.Timeout() && cause == cutDataTooSlow:
			continue // the rate window ended with enough bytes: read on in the next one
		}
		return n, err
	}
}

// cutLocked makes the connection's reads fail from now on, and says why once. Called with mu held.
func (c *trackedConn) cutLocked(reason string) {
	if c.cut != nil {
		return
	}
	c.cut = &cutError{reason: reason}
	c.srv.o.Metrics.MessagesRejected.WithLabelValues(stageSession, reason).Inc()
	c.srv.log.Warn("rejected", "session", c.id, "listener", c.listener, "stage", stageSession, "reason", reason,
		"remote", c.remote.String(), "code", 421)
}

// authenticated ends the time limit to authenticate.
func (c *trackedConn) authenticated() {
	c.mu.Lock()
	c.authBy = time.Time{}
	c.mu.Unlock()
}

// beginData switches reads to the transfer-rate rule for a DATA or BDAT transfer.
func (c *trackedConn) beginData() {
	c.mu.Lock()
	c.inData, c.windowStart, c.windowBytes = true, time.Now(), 0
	c.mu.Unlock()
}

// endData switches back to command lines. The deadline of the line that started the transfer is over:
// go-smtp sets the next line's before reading it.
func (c *trackedConn) endData() {
	c.mu.Lock()
	c.inData, c.lineBy = false, time.Time{}
	c.mu.Unlock()
}

func (c *trackedConn) Write(p []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.srv.o.IdleTimeout)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}

func (c *trackedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// connOf finds the trackedConn under go-smtp's connection (a *tls.Conn after STARTTLS or on an
// implicit-TLS listener).
func connOf(c net.Conn) *trackedConn {
	for c != nil {
		switch x := c.(type) {
		case *trackedConn:
			return x
		case interface{ NetConn() net.Conn }:
			c = x.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// errorLog adapts go-smtp's internal error log (TLS handshake failures, connection errors) to slog.
// go-smtp never passes AUTH data to it.
type errorLog struct {
	log      *slog.Logger
	listener string
}

func (e errorLog) Printf(format string, v ...any) {
	e.log.Info("smtp connection error", "listener", e.listener, "err", strings.TrimSpace(fmt.Sprintf(format, v...)))
}

func (e errorLog) Println(v ...any) {
	e.log.Info("smtp connection error", "listener", e.listener, "err", strings.TrimSpace(fmt.Sprintln(v...)))
}

// clientKey groups client addresses the way one host holds them: an IPv4 address, or an IPv6 /64.
func clientKey(a netip.Addr) netip.Addr {
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}
