package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/config"
	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/metrics"
	"github.com/mailgate/mailgate/relay/submit"
)

// cmdTestSend sends one composed test message synchronously through a channel's real transport (no
// queue, no retry) and prints what the upstream said. Exit status 0 only when it was accepted.
func cmdTestSend(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "test-send", "")
	cfgPath := fs.String("config", "", "configuration file (default: the development default)")
	channel := fs.String("channel", "", "channel name (required)")
	to := fs.String("to", "", "recipient address (required)")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *channel == "" || *to == "" {
		fs.Usage()
		return &exitError{code: 2}
	}
	if !relay.ValidAddress(*to) {
		return &exitError{code: 2, msg: fmt.Sprintf("test-send: --to %q is not a mail address (local@domain.example)", *to)}
	}
	cfg, err := loadOrDevelopment(*cfgPath, "mailgate-data")
	if err != nil {
		return err
	}
	var ch *config.Channel
	for i := range cfg.Channels {
		if cfg.Channels[i].Name == *channel {
			ch = &cfg.Channels[i]
		}
	}
	if ch == nil {
		return unknownChannel(cfg, *channel)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	d, err := commandDaemon(ctx, env, cfg)
	if err != nil {
		return err
	}
	defer d.store.Close()
	defer d.budgets.Close()
	gen, err := d.build(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeTransports(gen.transports)
	transport, ok := gen.transports[ch.Transport]
	if !ok {
		return fmt.Errorf("channel %s: no transport %q", ch.Name, ch.Transport)
	}
	fmt.Fprintf(env.stdout, "channel %s -> transport %s\n", ch.Name, ch.Transport)
	if err := preflight(ctx, env, gen, ch.Transport, ch.ForceTLS); err != nil {
		return &exitError{code: 1, msg: "test-send: " + err.Error()}
	}

	comp, err := buildComposition(cfg, nil)
	if err != nil {
		return err
	}
	raw := fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: mailgate test-send (%s)\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"+
		"This is a test message sent by mailgate test-send through channel %s.\r\n", ch.From, *to, time.Now().UTC().Format(time.RFC3339), ch.Name)
	var body bytes.Buffer
	res, err := comp.Compose(ctx, bytes.NewReader([]byte(raw)), &body, &submit.Submission{
		Channel: &submit.Channel{Name: ch.Name}, Principal: principalFor("test-send", "mailgate test-send"), Received: time.Now(),
	})
	if err != nil {
		return err
	}
	mailFrom := ch.MailFrom
	if mailFrom == "" {
		mailFrom = ch.From
	}
	m := &relay.Message{
		QueueID: "test-send-" + time.Now().UTC().Format("20060102T150405"), Channel: ch.Name, MailFrom: mailFrom,
		Recipients: []string{*to}, MessageID: res.MessageID, ForceTLS: ch.ForceTLS, Size: int64(body.Len()),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body.Bytes())), nil },
	}
	start := time.Now()
	result := transport.Deliver(ctx, m)
	if len(result.Errs) == 1 && result.Errs[0] != nil {
		kind := "temporary (would be retried)"
		if relay.IsPermanent(result.Errs[0]) {
			kind = "permanent (would bounce)"
		}
		return &exitError{code: 1, msg: fmt.Sprintf("test-send FAILED after %v, %s: %v", time.Since(start).Round(time.Millisecond), kind, result.Errs[0])}
	}
	fmt.Fprintf(env.stdout, "accepted in %v: %s\nMessage-ID: <%s>\n", time.Since(start).Round(time.Millisecond), result.Reply, res.MessageID)
	return nil
}

// commandDaemon is the part of a daemon an operator command needs to build transports and token
// sources from cfg: warnings to stderr, private metrics, and the store (close it when done).
func commandDaemon(ctx context.Context, env *cliEnv, cfg *config.Config) (*daemon, error) {
	// As serve does: on a fresh machine the development default's data directory does not exist yet.
	if cfg.Store.Path != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.Store.Path), 0o750); err != nil {
			return nil, err
		}
	}
	st, err := openConfiguredStore(ctx, cfg, nil)
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// test-send's connection counts against the mailbox's slots like the daemons' (a fleet's too).
	return &daemon{log: log, metrics: metrics.New(prometheus.NewRegistry()), store: st, budgets: budgetsFor(st, log)}, nil
}
