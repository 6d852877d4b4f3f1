package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/mailgate/mailgate/config"
	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/admin"
	"github.com/mailgate/mailgate/relay/store"
)

// openStore opens the store named by --config (or the development default's).
func openStore(ctx context.Context, configPath, dataDir string) (store.Store, error) {
	c, err := loadOrDevelopment(configPath, dataDir)
	if err != nil {
		return nil, err
	}
	return openConfiguredStore(ctx, c, nil)
}

// openConfiguredStore opens the store cfg names: the SQLite file (its directory created), or the
// PostgreSQL database whose DSN the store.postgres secret reference resolves to. Errors name the
// store by config.Store.Kind, never by the DSN.
func openConfiguredStore(ctx context.Context, cfg *config.Config, log *slog.Logger) (store.Store, error) {
	if cfg.Store.Postgres == "" {
		if err := os.MkdirAll(filepath.Dir(cfg.Store.Path), 0o750); err != nil {
			return nil, err
		}
		st, err := store.Open(cfg.Store.Path)
		if err != nil {
			return nil, fmt.Errorf("store %s: %w", cfg.Store.Path, err)
		}
		return st, nil
	}
	resolver, err := newResolver(ctx, cfg)
	if err != nil {
		return nil, err
	}
	dsn, err := resolver.Resolve(ctx, cfg.Store.Postgres)
	if err != nil {
		return nil, fmt.Errorf("store.postgres: %w", err)
	}
	st, err := store.OpenPostgres(ctx, dsn.Reveal(), store.PostgresOptions{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cfg.Store.Kind(), err)
	}
	return st, nil
}

// loadOrDevelopment loads a file, or with none the development default under dataDir.
func loadOrDevelopment(configPath, dataDir string) (*config.Config, error) {
	if configPath != "" {
		return loadConfig(configPath)
	}
	// The operator commands never authenticate the demo user, but building the user directory (for
	// test-send's composition) needs a well-formed hash: the cheapest one.
	hash, err := bcrypt.GenerateFromPassword([]byte("demo"), bcrypt.MinCost)
	if err != nil {
		return nil, err
	}
	dev := config.Development(config.DevelopmentOptions{DataDir: dataDir, DemoPasswordHash: string(hash)})
	dev.ApplyDefaults()
	return dev, nil
}

func cmdBounces(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "remove") {
		return usageError("bounces", args)
	}
	sub := args[0]
	fs := newFlags(env, "bounces "+sub, map[string]string{"list": "", "remove": "ADDRESS"}[sub])
	cfg := fs.String("config", "", "configuration file (default: the development default)")
	dataDir := fs.String("data-dir", "mailgate-data", "data directory of the development default")
	address := fs.String("address", "", "only this recipient address (list)")
	channel := fs.String("channel", "", "only this channel (list)")
	limit := fs.Int("limit", 100, "at most this many (list)")
	asJSON := fs.Bool("json", false, "print a JSON array (list)")
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	st, err := openStore(ctx, *cfg, *dataDir)
	if err != nil {
		return err
	}
	defer st.Close()
	if sub == "remove" {
		if len(pos) != 1 {
			fs.Usage()
			return &exitError{code: 2}
		}
		n, err := st.RemoveBounces(ctx, pos[0])
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "removed %d bounce record(s) of %s; it is no longer suppressed\n", n, pos[0])
		return nil
	}
	bs, err := st.Bounces(ctx, store.BounceFilter{Address: *address, Channel: *channel, Limit: *limit})
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(env.stdout, mapRows(bs, bounceView))
	}
	w := tabwriter.NewWriter(env.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tADDRESS\tCHANNEL\tCODE\tFAULT\tSUPPRESSED\tREASON\tMESSAGE-ID\tDIAGNOSTIC")
	for _, b := range bs {
		suppressed := "no"
		if b.Suppressed {
			suppressed = "yes"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d %s\t%s\t%s\t%s\t%s\t%s\n", b.Time.UTC().Format(time.RFC3339), b.Address, b.Channel,
			b.Code, b.Enhanced, b.Fault, suppressed, b.Reason, b.MessageID, oneLine(b.Diagnostic))
	}
	return w.Flush()
}

func cmdLog(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) == 0 || args[0] != "search" {
		return usageError("log", args)
	}
	fs := newFlags(env, "log search", "title=TICKET | ticket=TICKET | id=QUEUEID | message-id=ID | rcpt=ADDR | status=S | since=T | until=T")
	cfg := fs.String("config", "", "configuration file (default: the development default)")
	dataDir := fs.String("data-dir", "mailgate-data", "data directory of the development default")
	limit := fs.Int("limit", 100, "at most this many messages")
	asJSON := fs.Bool("json", false, "print a JSON array")
	queries, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	f := store.DeliveryFilter{Limit: *limit}
	now := time.Now()
	for _, q := range queries {
		k, v, ok := strings.Cut(q, "=")
		var terr error
		switch {
		case ok && (k == "title" || k == "ticket"):
			f.Ticket = v
		case ok && k == "id":
			f.QueueID = v
		case ok && k == "message-id":
			f.MessageID = strings.Trim(v, "<>")
		case ok && k == "rcpt":
			f.Rcpt = v
		case ok && k == "status":
			f.Status = v
		case ok && k == "since":
			f.Since, terr = logTime(v, now)
		case ok && k == "until":
			f.Until, terr = logTime(v, now)
		default:
			return &exitError{code: 2, msg: fmt.Sprintf("mailgate log search: unknown query %q (title=, ticket=, id=, message-id=, rcpt=, status=, since=, until=)", q)}
		}
		if terr != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("mailgate log search: %s: %v (an RFC 3339 time, a date 2026-11-27, or a duration before now such as 24h)", q, terr)}
		}
	}
	st, err := openStore(ctx, *cfg, *dataDir)
	if err != nil {
		return err
	}
	defer st.Close()
	rs, err := st.Deliveries(ctx, f)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(env.stdout, mapRows(rs, admin.DeliveryView))
	}
	// One line per recipient: a mixed outcome shows who got the message and who did not.
	w := tabwriter.NewWriter(env.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tQUEUE-ID\tTICKET\tCHANNEL\tPRINCIPAL\tAGENT\tRECIPIENT\tSTATUS\tATTEMPTS\tREPLY")
	for _, r := range rs {
		agent := r.Agent
		if agent == "" {
			agent = "-"
		}
		states := r.States
		if len(states) == 0 { // a record from before the per-recipient log
			states = []relay.RecipientState{{Address: strings.Join(r.Recipients, ","), Status: r.Status, Reply: r.LastReply, Time: r.Time}}
		}
		for _, st := range states {
			when := st.Time
			if when.IsZero() {
				when = r.Time
			}
			reply := st.Reply
			if st.Code != 0 && !strings.HasPrefix(reply, strconv.Itoa(st.Code)) {
				reply = fmt.Sprintf("%d %s %s", st.Code, st.Enhanced, reply)
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", when.UTC().Format(time.RFC3339), r.QueueID, r.Ticket, r.Channel,
				r.Principal, agent, st.Address, st.Status, r.Attempts, oneLine(reply))
		}
	}
	return w.Flush()
}

// logTime reads a log search bound: an RFC 3339 time, a date (midnight UTC), or a duration before now.
func logTime(v string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse("2006-01-02", v); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return time.Time{}, errors.New("not a time")
	}
	return now.Add(-d), nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
