package submit_test

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/auth"
	"github.com/mailgate/mailgate/relay/metrics"
	"github.com/mailgate/mailgate/relay/submit"
)

// How cmd/mailgate wires submission: build the reloadable Rules from the config, the Server from its
// options, serve until the context ends, and swap Rules on SIGHUP.
func Example() {
	var (
		ctx          context.Context     // cancelled on SIGTERM
		cert         tls.Certificate     // from the configured files, or a generated one for development
		spool        submit.Spool        // relay/queue
		suppressions submit.Suppressions // relay/store
		composer     submit.Composer     // relay/compose, adapted
		reload       <-chan struct{}     // SIGHUP, after the new config validated
	)
	dir, err := auth.NewDirectory(
		[]auth.User{{Login: "demo", Name: "Demo", PasswordHash: "$2a$10$...", Role: "agent", BusinessUnit: "default"}},
		[]auth.Role{{Name: "agent", Channels: map[string]auth.Permission{"Support": {Reply: true, Outbound: true}}}},
		[]auth.TrustedNetwork{{Prefix: netip.MustParsePrefix("10.20.0.0/16"), Principal: "crm", Role: "agent"}},
	)
	if err != nil {
		panic(err) // config.Validate reports these with paths
	}
	rules, err := submit.NewRules(dir, []submit.Channel{{
		Name: "Support", FromAddress: "support@example.com", OutboundActive: true,
		Transport: "outbox", MailFrom: "bounces@example.com",
	}}, composer)
	if err != nil {
		panic(err)
	}
	srv, err := submit.New(submit.Options{
		Hostname: "mail.example.com",
		Listeners: []submit.Listener{
			{Name: "submission", Address: ":587", Mode: submit.ModeStartTLS},
			{Name: "submissions", Address: ":465", Mode: submit.ModeImplicit},
		},
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{cert}},
		TempDir:      "/var/lib/mailgate/tmp",
		Spool:        spool,
		Suppressions: suppressions,
		Logger:       slog.Default(),
		Metrics:      metrics.New(prometheus.NewRegistry()),
	}, rules)
	if err != nil {
		panic(err)
	}
	go func() {
		for range reload {
			srv.SetRules(rules) // a freshly built *submit.Rules
		}
	}()
	_ = srv.Serve(ctx)
}
