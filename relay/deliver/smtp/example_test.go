package smtp_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/smtp"
	"github.com/mailgate/mailgate/relay/metrics"
)

// Example wires a Microsoft 365 upstream with XOAUTH2, as cmd/mailgate does from a config entry
// (tokens comes from auth/oauth; the password fields stay empty for OAuth).
func Example() {
	var tokens smtp.TokenSource // e.g. the auth/oauth source for this server's credential
	tr, err := smtp.New(smtp.Options{
		Name:     "m365",
		Host:     "smtp.office365.com",
		Port:     587,
		TLS:      smtp.TLSStartTLS,
		Auth:     smtp.AuthXOAUTH2,
		Tokens:   tokens,
		Mailbox:  "support@contoso.example",
		Provider: smtp.ProviderMicrosoft, // 3 connections, 30 msg/min, 10,000 rcpt/day unless overridden
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Metrics:  metrics.New(prometheus.NewRegistry()),
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tr.Close()
	var _ relay.Transport = tr // handed to the queue as the transport named "m365"

	// test-send: print what the server offers, then send and print the final reply.
	ctx := context.Background()
	if report, err := tr.Probe(ctx, true); err != nil {
		fmt.Print(report, err)
		return
	}
}
