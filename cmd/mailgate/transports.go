package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"

	"github.com/mailgate/mailgate/auth/oauth"
	"github.com/mailgate/mailgate/config"
	"github.com/mailgate/mailgate/kms"
	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/admin"
	"github.com/mailgate/mailgate/relay/deliver/graph"
	"github.com/mailgate/mailgate/relay/deliver/outbox"
	"github.com/mailgate/mailgate/relay/deliver/ses"
	"github.com/mailgate/mailgate/relay/deliver/ses/events"
	smtpdeliver "github.com/mailgate/mailgate/relay/deliver/smtp"
	"github.com/mailgate/mailgate/relay/store"
	"github.com/mailgate/mailgate/relay/submit"
)

// transportSet is the queue's view of the transports: swapped whole on reload, so the next attempt of
// every message goes through the transport its channel names now.
type transportSet struct {
	m atomic.Pointer[map[string]relay.Transport]
}

// Transport returns the transport registered under name.
func (s *transportSet) Transport(name string) (relay.Transport, bool) {
	m := s.m.Load()
	if m == nil {
		return nil, false
	}
	t, ok := (*m)[name]
	return t, ok
}

func (s *transportSet) swap(m map[string]relay.Transport) map[string]relay.Transport {
	old := s.m.Swap(&m)
	if old == nil {
		return nil
	}
	return *old
}

func (s *transportSet) close() {
	if m := s.m.Load(); m != nil {
		closeTransports(*m)
	}
}

func closeTransports(m map[string]relay.Transport) {
	for _, t := range m {
		if c, ok := t.(io.Closer); ok {
			_ = c.Close()
		}
	}
}

// generation is what one configuration builds: submission's rules, the transports, and the
// readiness checks that go with them.
type generation struct {
	rules      *submit.Rules
	transports map[string]relay.Transport
	checks     map[string]admin.Check
	oauth      map[string]*oauth.Source
	ses        *ses.Transport
	workers    map[string]int     // queue workers of the custom SMTP and Graph servers: their slots
	stop       context.CancelFunc // ends the generation's background work (SES policy re-checks)
}

// credentials are the generation's OAuth credentials as the admin API reports them (GET /oauth).
func (g *generation) credentials() map[string]admin.Credential {
	out := make(map[string]admin.Credential, len(g.oauth))
	for name, src := range g.oauth {
		out[name] = src
	}
	return out
}

// sesRecheck is how often the SES account and the Force TLS channels' policies are read again, so a
// configuration set switched to OPTIONAL in the console holds Force TLS mail within this long.
const sesRecheck = 5 * time.Minute

// close stops the generation's background work; its transports are closed by whoever swapped them out.
func (g *generation) close() {
	if g.stop != nil {
		g.stop()
	}
}

// build makes a generation from cfg. Secrets are decrypted here, once; an error leaves nothing running.
func (d *daemon) build(ctx context.Context, cfg *config.Config) (*generation, error) {
	comp, err := buildComposition(cfg, d.composeBudget)
	if err != nil {
		return nil, err
	}
	resolver, err := newResolver(ctx, cfg)
	if err != nil {
		return nil, err
	}
	secrets, err := resolveSecrets(ctx, resolver, cfg)
	if err != nil {
		return nil, err
	}
	g := &generation{transports: map[string]relay.Transport{}, checks: map[string]admin.Check{}, oauth: map[string]*oauth.Source{},
		workers: map[string]int{}, stop: func() {}}
	g.checks["spool free space"] = submit.FreeSpace(cfg.Spool.Dir, cfg.Spool.MinFreeBytes)
	if cfg.Outbox != nil {
		g.transports[config.TransportOutbox] = &outbox.Outbox{Dir: cfg.Outbox.Dir}
	}
	for i, s := range cfg.SMTPServers {
		t, src, err := d.smtpTransport(cfg, i, s, secrets, resolver)
		if err != nil {
			closeTransports(g.transports)
			return nil, fmt.Errorf("smtp_servers[%d] (%s): %w", i, s.Name, err)
		}
		g.transports[s.Name] = t
		g.workers[s.Name] = t.MaxConnections()
		if src != nil {
			g.oauth[s.Name] = src
			g.checks["oauth "+s.Name] = oauthCheck(src)
		}
	}
	for i, gs := range cfg.GraphServers {
		t, src, err := d.graphTransport(i, gs, secrets, resolver)
		if err != nil {
			closeTransports(g.transports)
			return nil, fmt.Errorf("graph_servers[%d] (%s): %w", i, gs.Name, err)
		}
		g.transports[gs.Name] = t
		g.workers[gs.Name] = t.MaxConnections()
		g.oauth[gs.Name] = src
		g.checks["oauth "+gs.Name] = oauthCheck(src)
	}
	for _, ch := range cfg.Channels {
		if t, ok := g.transports[ch.Transport].(*smtpdeliver.Transport); ok {
			comp.advertised[ch.Name] = t.AdvertisedSize
		}
	}
	if g.rules, err = buildRules(cfg, comp); err != nil {
		closeTransports(g.transports)
		return nil, err
	}
	if cfg.SES != nil {
		t, err := d.sesTransport(ctx, cfg, secrets["ses.secret_access_key"])
		if err != nil {
			closeTransports(g.transports)
			return nil, fmt.Errorf("ses: %w", err)
		}
		g.transports[config.TransportSES] = t
		g.ses = t
		watch, stop := context.WithCancel(context.WithoutCancel(ctx))
		go t.Watch(watch, sesRecheck)
		g.stop = stop
		g.checks["ses"] = func(context.Context) error {
			if ps := t.Problems(); len(ps) > 0 {
				msgs := make([]string, len(ps))
				for i, p := range ps {
					msgs[i] = p.String()
				}
				return errors.New(strings.Join(msgs, "; "))
			}
			return nil
		}
	}
	return g, nil
}

// oauthCheck is the readiness check of an OAuth credential: its latest token error and remedy, then
// its expiry (a failure from 7 days ahead, a warning from 30).
func oauthCheck(src *oauth.Source) admin.Check {
	return func(context.Context) error {
		st := src.Status()
		if !st.Healthy {
			if st.Remedy == "" || strings.Contains(st.LastError, st.Remedy) {
				return errors.New(st.LastError)
			}
			return fmt.Errorf("%s; remedy: %s", st.LastError, st.Remedy)
		}
		switch warn, fail := src.ExpiryProblem(time.Now()); {
		case fail != "":
			return errors.New(fail)
		case warn != "":
			return &admin.Warning{Msg: warn}
		}
		return nil
	}
}

// graphTransport builds a Graph mailbox's transport and its OAuth credential (audience Graph).
func (d *daemon) graphTransport(i int, gs config.GraphServer, secrets map[string]kms.Secret, resolver *kms.Resolver) (*graph.Transport, *oauth.Source, error) {
	src, err := d.oauthSource(gs.Name, fmt.Sprintf("graph_servers[%d].oauth", i), gs.OAuth, oauth.APIGraph, secrets, resolver)
	if err != nil {
		return nil, nil, err
	}
	o := graph.Options{
		Name: gs.Name, Mailbox: gs.OAuth.Mailbox, Endpoint: gs.Endpoint, Tokens: src,
		MaxConcurrent: gs.MaxConcurrentRequests, MessagesPerMinute: gs.MessagesPerMinute, RecipientsPerDay: gs.RecipientsPerDay,
		MaxMessageBytes: gs.MaxMessageBytes, Budgets: d.graphBudgets, Logger: d.log.With("server", gs.Name),
		ShapingWait: d.metrics.ShapingWait.WithLabelValues(gs.Name),
	}
	if gs.CAFile != "" {
		pool, err := caPool(gs.CAFile)
		if err != nil {
			return nil, nil, err
		}
		o.RootCAs = pool
	}
	t, err := graph.New(o)
	if err != nil {
		return nil, nil, err
	}
	return t, src, nil
}

// caPool is the system roots plus the PEM certificates of file (a private CA or an inspecting proxy's).
func caPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("ca_file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("ca_file: no PEM certificate in " + file)
	}
	return pool, nil
}

func (d *daemon) smtpTransport(cfg *config.Config, i int, s config.SMTPServer, secrets map[string]kms.Secret, resolver *kms.Resolver) (*smtpdeliver.Transport, *oauth.Source, error) {
	o := smtpdeliver.Options{
		Name: s.Name, Host: s.Host, Port: s.Port, TLS: smtpdeliver.TLSMode(s.TLS),
		HeloName: cfg.Hostname, MaxConnections: s.MaxConnections, MessagesPerMinute: s.MessagesPerMinute,
		RecipientsPerDay: s.RecipientsPerDay, MaxMessageBytes: s.MaxMessageBytes, DisableChunking: s.Chunking != nil && !*s.Chunking,
		DialTimeout: s.Timeouts.Connect.D(), CommandTimeout: s.Timeouts.Command.D(), DataTimeout: s.Timeouts.Data.D(), IdleTimeout: s.Timeouts.Idle.D(),
		Logger: d.log, Metrics: d.metrics, Budgets: d.budgets, // the transport names the server on every line
	}
	if s.Provider == "microsoft" {
		o.Provider = smtpdeliver.ProviderMicrosoft
	}
	if s.CAFile != "" {
		pool, err := caPool(s.CAFile)
		if err != nil {
			return nil, nil, err
		}
		o.RootCAs = pool
	}
	var src *oauth.Source
	switch s.Auth {
	case "none":
		o.Auth = smtpdeliver.AuthNone
	case "login", "plain":
		o.Auth = smtpdeliver.AuthMode(s.Auth)
		o.Username = s.Username
		o.Password = secrets[fmt.Sprintf("smtp_servers[%d].password", i)].Reveal()
	case "microsoft-oauth":
		var err error
		src, err = d.oauthSource(s.Name, fmt.Sprintf("smtp_servers[%d].oauth", i), s.OAuth, oauth.APISMTP, secrets, resolver)
		if err != nil {
			return nil, nil, err
		}
		o.Auth = smtpdeliver.AuthXOAUTH2
		o.Tokens = src
		o.Mailbox = s.OAuth.Mailbox
		o.Username = s.OAuth.Mailbox
	}
	t, err := smtpdeliver.New(o)
	if err != nil {
		return nil, nil, err
	}
	return t, src, nil
}

// oauthSource builds the OAuth credential configured at path (e.g. "graph_servers[0].oauth") for api:
// its client secret or certificate credential, the secret's configured expiry, the endpoints.
func (d *daemon) oauthSource(server, path string, o *config.OAuth, api oauth.API, secrets map[string]kms.Secret, resolver *kms.Resolver) (*oauth.Source, error) {
	opts := oauth.Options{
		Server: server, Provider: oauth.ProviderMicrosoft, Tenant: o.TenantID, ClientID: o.ClientID,
		ClientSecret: secrets[path+".client_secret"], Mailbox: o.Mailbox, Flow: oauth.Flow(o.Flow), API: api, Scopes: o.Scopes,
		RedirectURL: o.RedirectURL, AuthURL: o.AuthorizeURL, TokenURL: o.TokenURL,
		Store: d.store, Sealer: resolver, Fleet: d.store, Metrics: d.metrics, Logger: d.log, // the source names the server itself
	}
	if o.ClientSecretExpires != "" {
		t, err := time.Parse("2006-01-02", o.ClientSecretExpires)
		if err != nil {
			return nil, fmt.Errorf("oauth.client_secret_expires: %w", err)
		}
		opts.SecretExpires = t
	}
	if o.ClientCertificate != "" {
		pem, err := os.ReadFile(o.ClientCertificate)
		if err != nil {
			return nil, fmt.Errorf("oauth.client_certificate: %w", err)
		}
		cc, err := oauth.ParseClientCertificate(pem, secrets[path+".client_key"])
		if err != nil {
			return nil, fmt.Errorf("oauth.client_certificate: %w", err)
		}
		opts.ClientCertificate = cc
	}
	return oauth.New(opts)
}

func (d *daemon) sesTransport(ctx context.Context, cfg *config.Config, secretKey kms.Secret) (*ses.Transport, error) {
	chans := map[string]ses.Channel{}
	for _, ch := range cfg.Channels {
		if ch.Transport == config.TransportSES {
			chans[ch.Name] = ses.Channel{From: ch.From, ConfigurationSet: ch.SESConfigurationSet, ForceTLS: ch.ForceTLS,
				TenantName: ch.SESTenantName, IdentityARN: ch.SESIdentityARN}
		}
	}
	o := ses.Options{
		Region: cfg.SES.Region, Endpoint: cfg.SES.Endpoint, Channels: chans,
		MaxSendRate: cfg.SES.MaxSendRate, Logger: d.log.With("transport", "ses"),
	}
	if rate, ok := d.store.(ses.SendRate); ok { // a shared store paces the fleet as one sender
		o.SendRate = rate
	}
	if cfg.SES.AccessKeyID != "" {
		o.Credentials = credentials.NewStaticCredentialsProvider(cfg.SES.AccessKeyID, secretKey.Reveal(), "")
	}
	t, err := ses.New(ctx, o)
	if err != nil {
		return nil, err
	}
	// Read the account quota and confirm each Force TLS channel's TLS policy now, at start and reload,
	// rather than at the first message (each call is bounded inside Check).
	for _, p := range t.Check(ctx) {
		d.log.Error("ses check failed", "problem", p.String())
	}
	return t, nil
}

// checks are the readiness checks of a generation plus the process-wide ones.
func (d *daemon) checks(g *generation) map[string]admin.Check {
	out := map[string]admin.Check{
		"spool": func(context.Context) error {
			f, err := os.CreateTemp(d.spoolDir, ".ready-*")
			if err != nil {
				return fmt.Errorf("spool not writable: %w", err)
			}
			f.Close()
			return os.Remove(f.Name())
		},
		// A real query: the store answers, not just that the file exists.
		"store": func(ctx context.Context) error {
			if err := d.store.Unavailable(); err != nil {
				return err
			}
			_, _, err := d.store.Suppressed(ctx, "readiness-check@invalid")
			return err
		},
		// Setup and Force TLS faults the queue has seen: mail waiting (or bounced) on an operator.
		"delivery": func(context.Context) error {
			alerts := d.queue.Alerts()
			if len(alerts) == 0 {
				return nil
			}
			msgs := make([]string, len(alerts))
			for i, a := range alerts {
				msgs[i] = a.String()
			}
			return errors.New(strings.Join(msgs, "; "))
		},
	}
	for k, v := range g.checks {
		out[k] = v
	}
	return out
}

// sesEvents is the SNS endpoint for SES bounce and complaint notifications, writing into the store.
func sesEvents(cfg *config.Config, st store.Store, d *daemon) (*events.Handler, error) {
	sets := map[string]string{}
	for _, ch := range cfg.Channels {
		if ch.SESConfigurationSet != "" {
			sets[ch.SESConfigurationSet] = ch.Name
		}
	}
	return events.New(events.Options{
		Store: st, TopicARNs: cfg.SES.EventTopics, Channels: sets,
		Logger: d.log.With("component", "ses-events"), Metrics: d.metrics,
	})
}
