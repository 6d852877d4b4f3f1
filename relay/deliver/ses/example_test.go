package ses_test

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/ses"
	"github.com/mailgate/mailgate/relay/deliver/ses/events"
	"github.com/mailgate/mailgate/relay/metrics"
)

// store stands for relay/store: it records a notification's bounces and its claim in one transaction.
type store = events.Store

// Example shows how cmd/mailgate wires the SES transport and its events endpoint.
func Example() {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	m := metrics.New(prometheus.NewRegistry())

	tr, err := ses.New(ctx, ses.Options{
		Region: "eu-west-1",
		// Static keys from the configuration's secret reference; leave nil for the AWS default chain.
		Credentials: credentials.NewStaticCredentialsProvider("AKID", os.Getenv("SES_SECRET"), ""),
		Channels: map[string]ses.Channel{
			"Support": {ConfigurationSet: "support-events", ForceTLS: true},
		},
		MaxSendRate: 14,
		Logger:      log,
	})
	if err != nil {
		log.Error("ses", "err", err)
		return
	}
	for _, p := range tr.Check(ctx) { // at start-up; tr.Problems() feeds /readyz afterwards
		log.Error("not ready", "problem", p.String())
	}
	go tr.Watch(ctx, 5*time.Minute) // re-reads the Force TLS policies

	// The queue calls Deliver; relay.Classify says what each error means (retry, bounce, alert).
	var msg *relay.Message
	if msg != nil {
		res := tr.Deliver(ctx, msg)
		_ = res.Reply // SES MessageId, printed by test-send
	}

	var st store // relay/store
	if st != nil {
		h, err := events.New(events.Options{
			Store:     st,
			TopicARNs: []string{"arn:aws:sns:eu-west-1:111122223333:mailgate-ses-events"},
			Channels:  map[string]string{"support-events": "Support"},
			Logger:    log, Metrics: m,
		})
		if err == nil {
			http.NewServeMux().Handle("POST /ses/events", h)
			go h.Run(ctx) // prunes old notification claims
		}
	}
}
