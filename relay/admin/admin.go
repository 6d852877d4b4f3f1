// Package admin is mailgate's operator HTTP surfaces: the admin listener and the events listener.
//
// The admin listener (loopback by default) serves /metrics (Prometheus), /healthz (the process is
// alive) and /readyz (every readiness check passes: spool writable, store reachable, upstream
// credentials healthy, SES policy confirmed) to anyone who reaches it, and the operator API — the queue
// (list, retry, drop) and /debug/pprof — only to a request carrying `Authorization: Bearer <token>`.
// Without a configured token the operator API answers 403: it is never open. Every request's Host
// header must be localhost, an IP literal or a configured name, so a web page whose DNS name is rebound
// to 127.0.0.1 cannot reach the listener from an operator's browser (the attacker's name is in Host).
//
// The events listener serves one handler (SES notifications posted by SNS, see
// relay/deliver/ses/events) and nothing else: it may face the internet, and nothing operators use may
// ride along on it.
//
// Both listeners bound what a client can hold: header, read and idle timeouts, a cap on open
// connections (further clients wait in the kernel's accept queue), header and body size limits.
//
// Readiness checks are functions passed in by cmd, so this package knows nothing of the things it
// reports on. A failing check's text is shown to the operator: checks must return remedies, never
// secrets.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check reports whether one part of mailgate is ready; a non-nil error says what is wrong and how to fix it.
// An error that is (or wraps) a *Warning is reported without failing readiness.
type Check func(ctx context.Context) error

// Warning is a readiness finding that needs an operator soon but does not stop mailgate from working
// now (a credential that expires within weeks): /readyz shows it as WARN and still answers 200.
type Warning struct{ Msg string }

func (w *Warning) Error() string { return w.Msg }

// Options configure the admin listener.
type Options struct {
	Gatherer prometheus.Gatherer // served on /metrics
	Logger   *slog.Logger
	// Token is the operator API's bearer token; empty turns the operator API off (403).
	Token []byte
	// AllowedHosts are host names accepted in the Host header besides localhost and IP literals.
	AllowedHosts []string
	// Queue, when set, is served as the queue API (GET /queue, GET /queue/{id},
	// POST /queue/{id}/retry|drop|hold|release).
	Queue Queue
	// Instance names this process in a fleet: every answer carries it (header InstanceHeader) and
	// /readyz starts with it, so an operator knows which instance answered.
	Instance string
	// Deliveries, when set, is served as GET /deliveries (operator): the delivery log by ticket,
	// message-id, queue-id or recipient, for agent applications.
	Deliveries DeliveryLog
	// Drain, when set, is served as POST /drain (operator): stop accepting submissions and deliver what
	// is queued, before a rolling restart. /readyz fails from then on ("draining").
	Drain func()
	// Limits bound clients; zero fields take the defaults (32 connections, 5 s for headers, 30 s per
	// request, 1 min idle, 16 KiB of headers, 64 KiB of body).
	Limits Limits
}

// Server is the admin HTTP server.
type Server struct {
	listener
	mux     *http.ServeMux
	log     *slog.Logger
	allowed map[string]bool

	instance string
	drain    func()
	draining atomic.Bool

	mu     sync.RWMutex
	checks map[string]Check
	creds  map[string]Credential
	token  [sha256.Size]byte // SHA-256 of the token, so comparisons take the same time whatever its length
	hasTok bool
}

// New builds the admin server.
func New(o Options) *Server {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{mux: http.NewServeMux(), log: log, checks: map[string]Check{}, allowed: map[string]bool{}, instance: o.Instance, drain: o.Drain}
	for _, h := range o.AllowedHosts {
		s.allowed[strings.TrimSuffix(strings.ToLower(h), ".")] = true
	}
	s.SetToken(o.Token)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(o.Gatherer, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	// Profiles for operators chasing a slow relay: they show memory, so they need the token too.
	s.mux.Handle("GET /debug/pprof/", s.operator(http.HandlerFunc(pprof.Index)))
	s.mux.Handle("GET /debug/pprof/profile", s.operator(http.HandlerFunc(pprof.Profile)))
	s.mux.Handle("GET /debug/pprof/trace", s.operator(http.HandlerFunc(pprof.Trace)))
	if o.Queue != nil {
		api := queueAPI{o.Queue}
		s.mux.Handle("GET /queue", s.operator(http.HandlerFunc(api.list)))
		s.mux.Handle("POST /queue/{id}/retry", s.operator(http.HandlerFunc(api.retry)))
		s.mux.Handle("POST /queue/{id}/drop", s.operator(http.HandlerFunc(api.drop)))
		s.mux.Handle("GET /queue/{id}", s.operator(http.HandlerFunc(api.show)))
		s.mux.Handle("POST /queue/{id}/hold", s.operator(http.HandlerFunc(api.hold)))
		s.mux.Handle("POST /queue/{id}/release", s.operator(http.HandlerFunc(api.release)))
	}
	s.mux.Handle("GET /oauth", s.operator(http.HandlerFunc(s.credentials)))
	if o.Drain != nil {
		s.mux.Handle("POST /drain", s.operator(http.HandlerFunc(s.startDrain)))
	}
	if o.Deliveries != nil {
		s.mux.Handle("GET /deliveries", s.operator(deliveries(o.Deliveries)))
	}
	s.listener = listener{name: "admin", limits: o.Limits.withDefaults(adminLimits()), handler: s.named(s.checkHost(s.mux))}
	return s
}

// InstanceHeader names the instance that answered an admin request.
const InstanceHeader = "Mailgate-Instance"

// named puts the instance's name on every answer.
func (s *Server) named(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.instance != "" {
			w.Header().Set(InstanceHeader, s.instance)
		}
		next.ServeHTTP(w, r)
	})
}

// startDrain stops the intake once (later calls only report) and says so.
func (s *Server) startDrain(w http.ResponseWriter, _ *http.Request) {
	if s.draining.CompareAndSwap(false, true) {
		s.drain()
		s.log.Info("draining: submission stopped; queued mail is being delivered", "instance", s.instance)
	}
	fmt.Fprintln(w, "draining")
}

// SetToken replaces the operator API's bearer token (at start and on reload); empty turns the API off.
func (s *Server) SetToken(token []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hasTok = len(token) > 0
	s.token = sha256.Sum256(token)
}

// SetChecks replaces the readiness checks (on start and on every config reload).
func (s *Server) SetChecks(checks map[string]Check) {
	s.mu.Lock()
	s.checks = checks
	s.mu.Unlock()
}

// checkHost refuses requests whose Host is not localhost, an IP literal or an allowed name (421,
// RFC 9110 §15.5.20: this server is not the one the client meant): the defence against DNS rebinding,
// where the attacker's own name resolves to 127.0.0.1 and appears in Host.
func (s *Server) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.hostAllowed(r.Host) {
			s.log.Warn("admin request refused: unknown Host", "host", truncate(r.Host, 100), "remote", r.RemoteAddr, "path", truncate(r.URL.Path, 100))
			http.Error(w, "unknown host: add it to admin.allowed_hosts", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "" {
		return false
	}
	if host == "localhost" || s.allowed[host] {
		return true
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

// operator lets a request through only with the right bearer token, compared in constant time.
func (s *Server) operator(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.RLock()
		want, has := s.token, s.hasTok
		s.mu.RUnlock()
		if !has {
			http.Error(w, "the operator API is off: configure admin.token_file", http.StatusForbidden)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			s.log.Warn("admin request refused: missing or wrong token", "remote", r.RemoteAddr, "path", truncate(r.URL.Path, 100))
			w.Header().Set("WWW-Authenticate", `Bearer realm="mailgate admin"`)
			http.Error(w, "a bearer token is required (mailgate queue reads admin.token_file)", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	checks := s.checks
	s.mu.RUnlock()
	names := make([]string, 0, len(checks))
	for n := range checks {
		names = append(names, n)
	}
	sort.Strings(names)
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	var lines []string
	failed := false
	if s.instance != "" {
		lines = append(lines, "instance "+s.instance)
	}
	if s.draining.Load() {
		failed = true
		lines = append(lines, "FAIL draining: submission stopped for a restart")
	}
	for _, n := range names {
		var warn *Warning
		if err := checks[n](ctx); errors.As(err, &warn) {
			lines = append(lines, fmt.Sprintf("WARN %s: %v", n, err))
		} else if err != nil {
			failed = true
			lines = append(lines, fmt.Sprintf("FAIL %s: %v", n, err))
		} else {
			lines = append(lines, "ok   "+n)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if failed {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, strings.Join(lines, "\n"))
}

// Events is the events listener: one handler (the SES notification endpoint) at one path, 404 for
// everything else.
type Events struct{ listener }

// NewEvents serves h at path only. Zero fields of limits take the defaults (64 connections, 5 s for
// headers, 30 s per request and per answer, 1 min idle, 16 KiB of headers, 1 MiB of body).
func NewEvents(path string, h http.Handler, limits Limits) *Events {
	mux := http.NewServeMux()
	mux.Handle(path, h)
	return &Events{listener{name: "events", limits: limits.withDefaults(eventLimits()), handler: mux}}
}

// Limits bound what HTTP clients can make a listener hold.
type Limits struct {
	MaxConnections    int           // open connections; more wait to be accepted
	ReadHeaderTimeout time.Duration // to send the request line and headers
	ReadTimeout       time.Duration // to send the whole request
	WriteTimeout      time.Duration // to take the whole answer; 0 = none (pprof profiles take 30 s)
	IdleTimeout       time.Duration // between requests on a kept-alive connection
	MaxHeaderBytes    int
	MaxBodyBytes      int64
}

// adminLimits are the admin listener's defaults: operators and one Prometheus, small requests.
func adminLimits() Limits {
	return Limits{MaxConnections: 32, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10, MaxBodyBytes: 64 << 10}
}

// eventLimits are the events listener's defaults: SNS posts messages of at most 256 KiB (1 MiB with
// JSON escaping) and retries what fails, so a slow or greedy client is cut short.
func eventLimits() Limits {
	return Limits{MaxConnections: 64, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10, MaxBodyBytes: 1 << 20}
}

func (l Limits) withDefaults(d Limits) Limits {
	return Limits{
		MaxConnections:    orDefault(l.MaxConnections, d.MaxConnections),
		ReadHeaderTimeout: orDefault(l.ReadHeaderTimeout, d.ReadHeaderTimeout),
		ReadTimeout:       orDefault(l.ReadTimeout, d.ReadTimeout),
		WriteTimeout:      orDefault(l.WriteTimeout, d.WriteTimeout),
		IdleTimeout:       orDefault(l.IdleTimeout, d.IdleTimeout),
		MaxHeaderBytes:    orDefault(l.MaxHeaderBytes, d.MaxHeaderBytes),
		MaxBodyBytes:      orDefault(l.MaxBodyBytes, d.MaxBodyBytes),
	}
}

func orDefault[T int | int64 | time.Duration](v, d T) T {
	if v <= 0 {
		return d
	}
	return v
}

// listener is what the admin and events listeners share: binding, limits, serving, shutdown.
type listener struct {
	name    string
	limits  Limits
	handler http.Handler
	ln      net.Listener
	srv     *http.Server
}

// Listen binds addr, serving TLS when tlsConfig is set; Addr then tells the bound address (useful with
// port 0).
func (l *listener) Listen(addr string, tlsConfig *tls.Config) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s listener %s: %w", l.name, addr, err)
	}
	ln = newLimitListener(ln, l.limits.MaxConnections)
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	l.ln = ln
	return nil
}

// Addr is the bound address.
func (l *listener) Addr() string { return l.ln.Addr().String() }

// Serve serves until ctx ends, then shuts down gracefully.
func (l *listener) Serve(ctx context.Context) error {
	lim := l.limits
	l.srv = &http.Server{
		Handler:           http.MaxBytesHandler(l.handler, lim.MaxBodyBytes),
		ReadHeaderTimeout: lim.ReadHeaderTimeout, ReadTimeout: lim.ReadTimeout, WriteTimeout: lim.WriteTimeout,
		IdleTimeout: lim.IdleTimeout, MaxHeaderBytes: lim.MaxHeaderBytes,
	}
	errc := make(chan error, 1)
	go func() { errc <- l.srv.Serve(l.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := l.srv.Shutdown(sctx)
		if e := <-errc; !errors.Is(e, http.ErrServerClosed) {
			return e
		}
		return err
	}
}

// truncate bounds what a log line quotes from a request.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
