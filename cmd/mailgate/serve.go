package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailgate/mailgate/config"
	"github.com/mailgate/mailgate/relay/admin"
	"github.com/mailgate/mailgate/relay/compose"
	"github.com/mailgate/mailgate/relay/metrics"
	"github.com/mailgate/mailgate/relay/queue"
	"github.com/mailgate/mailgate/relay/store"
	"github.com/mailgate/mailgate/relay/submit"
)

func cmdServe(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "serve", "")
	cfgPath := fs.String("config", "", "configuration file; without one, the loopback development default runs")
	dataDir := fs.String("data-dir", "mailgate-data", "development default: directory of all state (spool, store, outbox, TLS)")
	listen := fs.String("listen", "127.0.0.1:2525", "development default: submission address")
	adminAddr := fs.String("admin", "127.0.0.1:9465", "development default: admin address")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(env, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	load := func() (*config.Config, error) { return config.Load(*cfgPath) }
	if *cfgPath == "" {
		hash, err := bcrypt.GenerateFromPassword([]byte("demo"), bcrypt.DefaultCost)
		if err != nil {
			return err
		}
		dev := config.Development(config.DevelopmentOptions{DataDir: *dataDir, SubmissionAddr: *listen, AdminAddr: *adminAddr, DemoPasswordHash: string(hash)})
		load = func() (*config.Config, error) { return dev, nil }
	}
	cfg, err := load()
	if err != nil {
		return &exitError{code: 1, msg: "mailgate serve: invalid configuration:\n" + err.Error()}
	}
	d := &daemon{log: log, load: load, configPath: *cfgPath}
	return d.run(ctx, cfg, env)
}

func newLogger(env *cliEnv, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(env.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(env.stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json")
}

// daemon is the running relay: what lives for the whole process (listeners, spool, store, metrics)
// and the generation built from the current configuration (rules, transports), swapped on SIGHUP.
type daemon struct {
	log        *slog.Logger
	load       func() (*config.Config, error)
	configPath string

	metrics    *metrics.Metrics
	store      *store.Store
	queue      *queue.Queue
	submit     *submit.Server
	admin      *admin.Server
	transports *transportSet

	spoolDir string
	// composeBudget is the memory all compositions share, made once: a reload keeps it.
	composeBudget *compose.Budget
	mu            sync.Mutex // serializes reloads
	cfg           *config.Config
}

func (d *daemon) run(ctx context.Context, cfg *config.Config, env *cliEnv) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.metrics = metrics.New(reg)
	d.spoolDir = cfg.Spool.Dir
	d.composeBudget = compose.NewBudget(cfg.Limits.ComposeMemoryBytes)

	for _, dir := range []string{filepath.Dir(cfg.Store.Path), cfg.Spool.Dir} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return err
		}
	}
	st, err := store.Open(cfg.Store.Path)
	if err != nil {
		return fmt.Errorf("store %s: %w", cfg.Store.Path, err)
	}
	defer st.Close()
	d.store = st

	gen, err := d.build(ctx, cfg)
	if err != nil {
		return &exitError{code: 1, msg: "mailgate serve: " + err.Error()}
	}
	d.transports = &transportSet{}
	d.transports.swap(gen.transports)
	defer d.transports.close()

	q, err := queue.New(queue.Options{
		Dir: cfg.Spool.Dir, Transports: d.transports, Bounces: st, DeliveryLog: st,
		Metrics: d.metrics, Logger: d.log,
		Workers:     cfg.Queue.WorkersPerTransport,
		Retry:       queue.Backoff{Initial: cfg.Queue.RetryInitial.D(), Max: cfg.Queue.RetryMax.D()},
		MaxLifetime: cfg.Queue.MaxLifetime.D(), AttemptTimeout: cfg.Queue.AttemptTimeout.D(),
	})
	if err != nil {
		return fmt.Errorf("spool %s: %w", cfg.Spool.Dir, err)
	}
	defer q.Close()
	d.queue = q

	tlsConfig, devCert, err := listenerTLS(cfg)
	if err != nil {
		return err
	}
	listeners := make([]submit.Listener, 0, len(cfg.Listeners))
	for _, l := range cfg.Listeners {
		listeners = append(listeners, submit.Listener{Name: l.Name, Address: l.Address, Mode: submit.Mode(l.TLS), AllowInsecureAuth: l.AllowInsecureAuth})
	}
	tmp := filepath.Join(cfg.Spool.Dir, "incoming")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	sub, err := submit.New(submit.Options{
		Hostname: cfg.Hostname, Listeners: listeners, TLSConfig: tlsConfig,
		MaxConnections: cfg.Limits.MaxConnections, MaxConnectionsPerClient: cfg.Limits.MaxConnectionsPerClient,
		MaxMessageBytes: cfg.Limits.MaxMessageBytes,
		MaxRecipients:   cfg.Limits.MaxRecipients, IdleTimeout: cfg.Limits.ReadTimeout.D(),
		AuthFailures: cfg.Limits.AuthFailures, AuthWindow: cfg.Limits.AuthFailureWindow.D(),
		AuthClientFailures: cfg.Limits.AuthFailuresPerClient, AuthTimeout: cfg.Limits.AuthTimeout.D(),
		CommandTimeout: cfg.Limits.CommandTimeout.D(), DataMinRate: cfg.Limits.DataMinRate,
		DataRateWindow: cfg.Limits.DataRateWindow.D(),
		TempDir:        tmp, Spool: q, Suppressions: st, Logger: d.log, Metrics: d.metrics,
	}, gen.rules)
	if err != nil {
		return err
	}
	defer sub.Close()
	d.submit = sub

	d.admin = admin.New(reg, d.log)
	queueAPI{q}.register(d.admin)
	if cfg.SES != nil {
		h, err := sesEvents(cfg, st, d)
		if err != nil {
			return err
		}
		d.admin.Handle("POST /ses/events", h)
	}
	d.admin.SetChecks(d.checks(gen))
	if err := d.admin.Listen(cfg.Admin.Address); err != nil {
		return err
	}
	d.cfg = cfg

	for _, l := range cfg.Listeners {
		fmt.Fprintf(env.stdout, "mailgate: submission %s (%s) on %s\n", l.Name, l.TLS, sub.Addr(l.Name))
	}
	fmt.Fprintf(env.stdout, "mailgate: admin on http://%s (/metrics /healthz /readyz)\n", d.admin.Addr())
	if cfg.Development {
		fmt.Fprintf(env.stdout, "mailgate: development default: user demo / password demo, channel Support <support@example.com>\n")
		fmt.Fprintf(env.stdout, "mailgate: TLS certificate %s\n", devCert)
		if cfg.Outbox != nil {
			fmt.Fprintf(env.stdout, "mailgate: delivered mail lands in %s\n", cfg.Outbox.Dir)
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				d.reload(ctx)
			}
		}
	}()

	errc := make(chan error, 3)
	go func() { errc <- q.Run(ctx) }()
	go func() { errc <- sub.Serve(ctx) }()
	go func() { errc <- d.admin.Serve(ctx) }()
	d.log.Info("started", "listeners", len(cfg.Listeners), "spool", cfg.Spool.Dir, "store", cfg.Store.Path)
	var first error
	for i := 0; i < 3; i++ {
		err := <-errc
		if err != nil && !errors.Is(err, context.Canceled) && first == nil {
			first = err
			cancel()
		}
		if i == 0 {
			cancel()
		}
	}
	d.log.Info("stopped")
	return first
}

// listenerTLS loads the configured certificate, or in development generates (once) a self-signed one.
func listenerTLS(cfg *config.Config) (*tls.Config, string, error) {
	var cert tls.Certificate
	var where string
	var err error
	if cfg.TLS.CertFile != "" {
		cert, err = tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		where = cfg.TLS.CertFile
	} else {
		cert, where, err = developmentCertificate(filepath.Join(filepath.Dir(cfg.Spool.Dir), "tls"))
	}
	if err != nil {
		return nil, "", fmt.Errorf("tls: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, where, nil
}

// reload re-reads the configuration; an invalid file keeps the running one. Listeners, spool, store
// and admin address are fixed for the life of the process (changing them needs a restart).
func (d *daemon) reload(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg, err := d.load()
	if err == nil {
		var gen *generation
		gen, err = d.build(ctx, cfg)
		if err == nil {
			d.submit.SetRules(gen.rules)
			old := d.transports.swap(gen.transports)
			d.admin.SetChecks(d.checks(gen))
			go func() { time.Sleep(time.Minute); closeTransports(old) }() // let attempts in flight finish
			if fixed := fixedChanges(d.cfg, cfg); fixed != "" {
				d.log.Warn("reload: these settings need a restart and were not changed", "settings", fixed)
			}
			d.cfg = cfg
			d.metrics.ConfigReloads.WithLabelValues("success").Inc()
			d.log.Info("config reloaded", "file", d.configPath)
			return
		}
	}
	d.metrics.ConfigReloads.WithLabelValues("failure").Inc()
	d.log.Error("config reload failed; the running configuration stays", "file", d.configPath, "error", strings.ReplaceAll(err.Error(), "\n", "; "))
}

func fixedChanges(old, cur *config.Config) string {
	var f []string
	if fmt.Sprint(old.Listeners) != fmt.Sprint(cur.Listeners) || old.TLS != cur.TLS {
		f = append(f, "listeners/tls")
	}
	if old.Spool != cur.Spool || old.Store != cur.Store {
		f = append(f, "spool/store")
	}
	if old.Admin != cur.Admin {
		f = append(f, "admin")
	}
	return strings.Join(f, ",")
}
