package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailgate/mailgate/config"
	"github.com/mailgate/mailgate/relay/admin"
	"github.com/mailgate/mailgate/relay/compose"
	"github.com/mailgate/mailgate/relay/deliver/graph"
	"github.com/mailgate/mailgate/relay/deliver/ses"
	smtpdeliver "github.com/mailgate/mailgate/relay/deliver/smtp"
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
	storePostgres := fs.String("store-postgres", "", "development default: a PostgreSQL DSN as a secret reference (env:NAME, file:PATH) instead of SQLite in --data-dir, to try several instances on one store")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLogger(env, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	load := func() (*config.Config, error) { return loadConfig(*cfgPath) }
	if *cfgPath == "" {
		hash, err := bcrypt.GenerateFromPassword([]byte("demo"), bcrypt.DefaultCost)
		if err != nil {
			return err
		}
		dev := config.Development(config.DevelopmentOptions{DataDir: *dataDir, SubmissionAddr: *listen, AdminAddr: *adminAddr, DemoPasswordHash: string(hash)})
		if *storePostgres != "" {
			dev.Store = config.Store{Postgres: *storePostgres}
			dev.Instance = filepath.Base(*dataDir) // instances on one machine differ by their data directory
		}
		if err := ensureDevelopmentToken(dev.Admin.TokenFile); err != nil {
			return fmt.Errorf("development admin token: %w", err)
		}
		// The development default goes through the same validation as a file.
		load = func() (*config.Config, error) {
			if err := dev.Validate(); err != nil {
				return nil, err
			}
			return dev, checkBuild(dev)
		}
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

// The shared store keeps the fleet's upstream budgets and SES send rate.
var (
	_ smtpdeliver.Fleet = (*store.Postgres)(nil)
	_ ses.SendRate      = (*store.Postgres)(nil)
)

// budgetsFor is the registry of upstream budgets: a shared store keeps the connection slots and rate
// windows for the whole fleet; otherwise they are this process's.
func budgetsFor(st store.Store, log *slog.Logger) *smtpdeliver.Budgets {
	if fleet, ok := st.(smtpdeliver.Fleet); ok {
		return smtpdeliver.NewFleetBudgets(fleet, smtpdeliver.FleetOptions{Logger: log.With("component", "budgets")})
	}
	return smtpdeliver.NewBudgets()
}

// daemon is the running relay: what lives for the whole process (listeners, spool, store, metrics)
// and the generation built from the current configuration (rules, transports), swapped on SIGHUP.
type daemon struct {
	log        *slog.Logger
	load       func() (*config.Config, error)
	configPath string

	metrics    *metrics.Metrics
	store      store.Store
	queue      *queue.Queue
	submit     *submit.Server
	admin      *admin.Server
	events     *admin.Events
	transports *transportSet

	spoolDir string
	instance string // this process's name in the fleet (config instance, else the host name)
	// composeBudget is the memory all compositions share, made once: a reload keeps it.
	composeBudget *compose.Budget
	mu            sync.Mutex // serializes reloads
	cfg           *config.Config
	gen           *generation          // the running generation, replaced on reload
	budgets       *smtpdeliver.Budgets // per-mailbox slots, pool and rate windows, kept across reloads
	// graphBudgets are the Graph mailboxes' request slots and rate windows, kept across reloads.
	graphBudgets *graph.Budgets
}

func (d *daemon) run(ctx context.Context, cfg *config.Config, env *cliEnv) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.metrics = metrics.New(reg)
	ver, revision, _ := buildVersion()
	d.metrics.BuildInfo.WithLabelValues(ver, revision, runtime.Version()).Set(1)
	d.metrics.ConfigLastReload.SetToCurrentTime()
	d.spoolDir = cfg.Spool.Dir
	d.composeBudget = compose.NewBudget(cfg.Limits.ComposeMemoryBytes)
	d.graphBudgets = graph.NewBudgets()
	d.instance = cfg.Instance
	if d.instance == "" {
		var err error
		if d.instance, err = os.Hostname(); err != nil {
			d.instance = "mailgate"
		}
	}

	if err := os.MkdirAll(cfg.Spool.Dir, 0o750); err != nil {
		return err
	}
	st, err := openConfiguredStore(ctx, cfg, d.log.With("component", "store"))
	if err != nil {
		return err
	}
	defer st.Close()
	d.store = st
	d.budgets = budgetsFor(st, d.log)
	defer d.budgets.Close()

	gen, err := d.build(ctx, cfg)
	if err != nil {
		return &exitError{code: 1, msg: "mailgate serve: " + err.Error()}
	}
	d.transports = &transportSet{}
	d.transports.swap(gen.transports)
	defer d.transports.close()
	d.gen = gen
	defer func() { d.gen.close() }()

	q, err := queue.New(queue.Options{
		Dir: cfg.Spool.Dir, Transports: d.transports, Bounces: st, DeliveryLog: st, Gate: st,
		Metrics: d.metrics, Logger: d.log,
	})
	if err == nil {
		q.SetPolicy(queuePolicy(cfg, gen))
	}
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

	token, err := readAdminToken(cfg.Admin.TokenFile)
	if err != nil {
		return err
	}
	// Drain stops the submission listeners (open sessions finish) while the queue goes on delivering.
	subCtx, stopIntake := context.WithCancel(ctx)
	defer stopIntake()
	var draining atomic.Bool
	d.admin = admin.New(admin.Options{Gatherer: reg, Logger: d.log.With("component", "admin"), Token: token,
		AllowedHosts: cfg.Admin.AllowedHosts, Queue: q, Deliveries: st, Instance: d.instance,
		Drain: func() { draining.Store(true); stopIntake() }})
	clear(token)
	if cfg.Admin.TokenFile == "" {
		d.log.Warn("the operator API (queue, pprof) is off: configure admin.token_file")
	}
	d.admin.SetChecks(d.checks(gen))
	d.admin.SetCredentials(gen.credentials())
	if err := d.admin.Listen(cfg.Admin.Address, nil); err != nil {
		return err
	}
	if cfg.SES != nil {
		h, err := sesEvents(cfg, st, d)
		if err != nil {
			return err
		}
		go h.Run(ctx) // prunes old notification claims
		d.events = admin.NewEvents("/ses/events", h, admin.Limits{})
		var eventsTLS *tls.Config
		if cfg.Events.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.Events.CertFile, cfg.Events.KeyFile)
			if err != nil {
				return fmt.Errorf("events tls: %w", err)
			}
			eventsTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
		if err := d.events.Listen(cfg.Events.Address, eventsTLS); err != nil {
			return err
		}
	}
	if cfg.Development {
		// Where `mailgate queue` looks when given no --admin (next to the token).
		if err := os.WriteFile(filepath.Join(filepath.Dir(cfg.Admin.TokenFile), developmentAdminAddressFile), []byte(d.admin.Addr()+"\n"), 0o600); err != nil {
			return err
		}
	}
	d.cfg = cfg

	for _, l := range cfg.Listeners {
		fmt.Fprintf(env.stdout, "mailgate: submission %s (%s) on %s\n", l.Name, l.TLS, sub.Addr(l.Name))
	}
	fmt.Fprintf(env.stdout, "mailgate: admin on http://%s (/metrics /healthz /readyz; queue and pprof with the token in %s)\n", d.admin.Addr(), cfg.Admin.TokenFile)
	if d.events != nil {
		fmt.Fprintf(env.stdout, "mailgate: SES events on %s (POST /ses/events)\n", d.events.Addr())
	}
	if cfg.Development {
		fmt.Fprintf(env.stdout, "mailgate: development default: user demo / password demo, channel Support <support@example.com>\n")
		fmt.Fprintf(env.stdout, "mailgate: TLS certificate %s\n", devCert)
		if cfg.Outbox != nil {
			fmt.Fprintf(env.stdout, "mailgate: delivered mail lands in %s\n", cfg.Outbox.Dir)
		}
		if len(cfg.Listeners) > 0 {
			host, port, _ := net.SplitHostPort(sub.Addr(cfg.Listeners[0].Name).String())
			fmt.Fprintf(env.stdout, "mailgate: next: send a reply as the demo agent —\n"+
				"  swaks --server %s --port %s --tls --tls-ca-path %s --auth LOGIN --auth-user demo --auth-password demo \\\n"+
				"        --to customer@example.net --h-From support@example.com --add-header 'X-Mailgate-Ticket: 123456'\n"+
				"  then: mailgate preview --channel Support, mailgate config show, and a production file from examples/mailgate.yaml\n",
				host, port, devCert)
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

	serveSubmission := func(ctx context.Context) error {
		err := sub.Serve(subCtx)
		if err != nil || ctx.Err() != nil || !draining.Load() {
			return err
		}
		<-ctx.Done() // draining: the rest of the daemon delivers until it is stopped
		return nil
	}
	runners := []func(context.Context) error{q.Run, serveSubmission, d.admin.Serve}
	if d.events != nil {
		runners = append(runners, d.events.Serve)
	}
	errc := make(chan error, len(runners))
	for _, run := range runners {
		go func() { errc <- run(ctx) }()
	}
	d.log.Info("started", "instance", d.instance, "listeners", len(cfg.Listeners), "spool", cfg.Spool.Dir, "store", st.Describe())
	var first error
	for i := 0; i < len(runners); i++ {
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

// reload re-reads the configuration; an invalid file keeps the running one. Rules, transports,
// readiness checks, the admin token and the queue's retry schedule, lifetime, attempt timeout and
// worker counts change at once — the new SMTP transports share the old ones' connection slots, pool and
// rate windows (smtp.Budgets), so a reload neither resets a mailbox's daily count nor opens more
// connections than it allows; listeners, TLS, spool, store, the admin and events listeners and limits.*
// (taken by the submission server when it is built) are fixed for the life of the process: a change to
// them is logged at warn, naming the keys, and counted in mailgate_config_restart_needed_total{key}, so
// an operator (or an alert) knows a restart is due.
func (d *daemon) reload(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	cfg, err := d.load()
	var token []byte
	if err == nil {
		token, err = readAdminToken(cfg.Admin.TokenFile)
	}
	if err == nil {
		var gen *generation
		gen, err = d.build(ctx, cfg)
		if err == nil {
			d.submit.SetRules(gen.rules)
			old := d.transports.swap(gen.transports)
			d.admin.SetChecks(d.checks(gen))
			d.admin.SetCredentials(gen.credentials())
			d.gen.close()
			d.gen = gen
			d.admin.SetToken(token)
			clear(token)
			d.queue.SetPolicy(queuePolicy(cfg, gen))
			go func() { time.Sleep(time.Minute); closeTransports(old) }() // let attempts in flight finish
			if fixed := fixedChanges(d.cfg, cfg); len(fixed) > 0 {
				for _, k := range fixed {
					d.metrics.ConfigRestartNeeded.WithLabelValues(k).Inc()
				}
				d.log.Warn("reload: these settings take effect only after a restart and were not changed", "settings", strings.Join(fixed, ","))
			}
			d.cfg = cfg
			d.metrics.ConfigReloads.WithLabelValues("success").Inc()
			d.metrics.ConfigLastReload.SetToCurrentTime()
			d.log.Info("config reloaded", "file", d.configPath)
			return
		}
	}
	d.metrics.ConfigReloads.WithLabelValues("failure").Inc()
	d.log.Error("config reload failed; the running configuration stays", "file", d.configPath, "err", strings.ReplaceAll(err.Error(), "\n", "; "))
}

// queuePolicy is the part of the queue settings a reload applies live. A custom SMTP server gets as many
// workers as it has connection slots: more would only wait for a slot with the wait counted as delivery.
func queuePolicy(cfg *config.Config, g *generation) queue.Policy {
	return queue.Policy{
		Retry:       queue.Backoff{Initial: cfg.Queue.RetryInitial.D(), Max: cfg.Queue.RetryMax.D()},
		MaxLifetime: cfg.Queue.MaxLifetime.D(), AttemptTimeout: cfg.Queue.AttemptTimeout.D(),
		Workers: cfg.Queue.WorkersPerTransport, TransportWorkers: g.workers,
	}
}

// fixedChanges names the settings that differ between the running configuration and the reloaded
// one but are only read at start: limits.* key by key (the submission server takes them when it is
// built), the rest by section. The queue's settings are applied live (queuePolicy) and not listed.
func fixedChanges(old, cur *config.Config) []string {
	var f []string
	f = append(f, changedFields("limits", old.Limits, cur.Limits)...)
	for _, s := range []struct {
		key      string
		old, cur any
	}{
		{"listeners", old.Listeners, cur.Listeners}, {"tls", old.TLS, cur.TLS}, {"spool", old.Spool, cur.Spool},
		{"store", old.Store, cur.Store}, {"instance", old.Instance, cur.Instance}, {"admin.address", old.Admin.Address, cur.Admin.Address},
		{"admin.allowed_hosts", old.Admin.AllowedHosts, cur.Admin.AllowedHosts}, {"events", old.Events, cur.Events},
	} {
		if !reflect.DeepEqual(s.old, s.cur) {
			f = append(f, s.key)
		}
	}
	return f
}

// changedFields lists prefix.<yaml key> for each field of two structs of one type that differs.
func changedFields(prefix string, old, cur any) []string {
	var f []string
	ov, cv := reflect.ValueOf(old), reflect.ValueOf(cur)
	for i := 0; i < ov.NumField(); i++ {
		if !reflect.DeepEqual(ov.Field(i).Interface(), cv.Field(i).Interface()) {
			name, _, _ := strings.Cut(ov.Type().Field(i).Tag.Get("yaml"), ",")
			f = append(f, prefix+"."+name)
		}
	}
	return f
}
