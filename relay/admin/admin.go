// Package admin is mailgate's operator HTTP listener: /metrics (Prometheus), /healthz (the process
// is alive), /readyz (every readiness check passes: spool writable, store reachable, upstream
// credentials healthy, SES policy confirmed), /debug/pprof, and any extra handlers the daemon mounts
// (SES events, the queue API).
//
// Readiness checks are functions passed in by cmd, so this package knows nothing of the things it
// reports on. A failing check's text is shown to the operator: checks must return remedies, never
// secrets.
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check reports whether one part of mailgate is ready; a non-nil error says what is wrong and how to fix it.
type Check func(ctx context.Context) error

// Server is the admin HTTP server.
type Server struct {
	mux    *http.ServeMux
	log    *slog.Logger
	mu     sync.RWMutex
	checks map[string]Check
	srv    *http.Server
	ln     net.Listener
}

// New builds the server with /metrics served from gatherer.
func New(gatherer prometheus.Gatherer, log *slog.Logger) *Server {
	s := &Server{mux: http.NewServeMux(), log: log, checks: map[string]Check{}}
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	// Profiles for operators chasing a slow relay; the admin listener is loopback unless configured
	// otherwise, like /metrics.
	s.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return s
}

// Handle mounts an extra handler (e.g. the SES event endpoint).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// SetChecks replaces the readiness checks (on start and on every config reload).
func (s *Server) SetChecks(checks map[string]Check) {
	s.mu.Lock()
	s.checks = checks
	s.mu.Unlock()
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
	for _, n := range names {
		if err := checks[n](ctx); err != nil {
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

// Listen binds addr; Addr then tells the bound address (useful with port 0).
func (s *Server) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin listener %s: %w", addr, err)
	}
	s.ln = ln
	return nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until ctx ends, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context) error {
	s.srv = &http.Server{Handler: s.mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err := s.srv.Shutdown(sctx)
		if e := <-errc; !errors.Is(e, http.ErrServerClosed) {
			return e
		}
		return err
	}
}
