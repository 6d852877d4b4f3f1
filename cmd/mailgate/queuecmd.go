package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mailgate/mailgate/config"
	"github.com/mailgate/mailgate/relay/admin"
	"github.com/mailgate/mailgate/relay/queue"
)

// adminFlags are the flags of the commands that talk to a running daemon's admin listener.
type adminFlags struct{ addr, cfgPath, dataDir, tokenFile *string }

func addAdminFlags(fs *flag.FlagSet) adminFlags {
	return adminFlags{
		addr:      fs.String("admin", "", "admin listener of the running daemon (default: --config's admin.address, else the one the development daemon recorded in --data-dir, else 127.0.0.1:9465)"),
		cfgPath:   fs.String("config", "", "configuration file: its admin.address and admin.token_file"),
		dataDir:   fs.String("data-dir", "mailgate-data", "data directory of the development default (admin.token, admin.address)"),
		tokenFile: fs.String("token-file", "", "file holding the admin bearer token (default: --config's admin.token_file, else --data-dir's admin.token)"),
	}
}

// adminClient calls one daemon's operator API with its bearer token.
type adminClient struct {
	ctx       context.Context
	addr      string
	tokenPath string
	token     []byte
	client    *http.Client
}

func (f adminFlags) client(ctx context.Context) (*adminClient, error) {
	addr, tokenPath, err := adminTarget(*f.addr, *f.cfgPath, *f.dataDir, *f.tokenFile)
	if err != nil {
		return nil, err
	}
	token, err := readAdminToken(tokenPath)
	if err != nil {
		return nil, fmt.Errorf("%w (give the token's file with --token-file, or --config)", err)
	}
	return &adminClient{ctx: ctx, addr: addr, tokenPath: tokenPath, token: token, client: &http.Client{Timeout: 10 * time.Second}}, nil
}

func (a *adminClient) call(method, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(a.ctx, method, "http://"+a.addr+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+string(a.token))
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, &daemonUnreachableError{addr: a.addr, err: err}
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusMisdirectedRequest {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("admin listener %s refused the request (%s): %s; is %s the daemon's admin.token_file?",
			a.addr, resp.Status, strings.TrimSpace(string(body)), a.tokenPath)
	}
	return resp, nil
}

// daemonUnreachableError: no daemon answered on the admin address (not running, or another address).
type daemonUnreachableError struct {
	addr string
	err  error
}

func (e *daemonUnreachableError) Error() string { return "is mailgate serve running? " + e.err.Error() }
func (e *daemonUnreachableError) Unwrap() error { return e.err }

// list reads the daemon's queue and the name of the instance that answered.
func (a *adminClient) list() (entries []queue.Entry, instance string, err error) {
	resp, err := a.call(http.MethodGet, "/queue")
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&entries); err != nil {
		return nil, "", err
	}
	return entries, resp.Header.Get(admin.InstanceHeader), nil
}

// queueAction is what `mailgate queue SUB` does to the selected messages (the admin API's POST action),
// "" for the read-only subcommands; ok is false for an unknown one.
func queueAction(sub string) (action string, ok bool) {
	switch sub {
	case "list", "summary", "show":
		return "", true
	case "retry", "drop", "hold", "release":
		return sub, true
	case "flush":
		return "retry", true
	}
	return "", false
}

// cmdQueue talks to the running daemon's queue through the admin listener (its live scheduler, never
// the spool files behind its back). retry, drop, hold and release take queue ids, or — with none —
// every message the filters select (--channel, --transport, --rcpt, --older-than); flush is retry of
// everything selected. summary counts messages by transport and age, as Postfix's qshape does.
func cmdQueue(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) == 0 {
		return usageError("queue", args)
	}
	sub := args[0]
	action, known := queueAction(sub)
	if !known {
		return usageError("queue", args)
	}
	argsUsage := map[string]string{"show": "ID", "retry": "[ID…]", "drop": "[ID…]", "hold": "[ID…]", "release": "[ID…]"}[sub]
	fs := newFlags(env, "queue "+sub, argsUsage)
	af := addAdminFlags(fs)
	asJSON := fs.Bool("json", false, "print JSON (list, show)")
	var sel queueFilter
	fs.StringVar(&sel.channel, "channel", "", "only messages of this channel")
	fs.StringVar(&sel.transport, "transport", "", "only messages to this transport")
	fs.StringVar(&sel.rcpt, "rcpt", "", "only messages with this recipient still pending (any case)")
	fs.DurationVar(&sel.olderThan, "older-than", 0, "only messages queued longer than this (e.g. 2h)")
	ids, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	if (sub == "show" && len(ids) != 1) || ((sub == "list" || sub == "summary" || sub == "flush") && len(ids) > 0) {
		fs.Usage()
		return &exitError{code: 2}
	}
	if action != "" && sub != "flush" && len(ids) == 0 && sel.empty() {
		// A bulk change needs a filter: `queue drop` alone must not empty the queue.
		return &exitError{code: 2, msg: fmt.Sprintf("mailgate queue %s: give queue ids, or select messages with --channel, --transport, --rcpt or --older-than", sub)}
	}
	d, err := af.client(ctx)
	if err != nil {
		return err
	}
	if sub == "show" {
		return d.show(env, ids[0], *asJSON)
	}
	if len(ids) == 0 {
		entries, instance, err := d.list()
		if err != nil {
			return err
		}
		entries = sel.apply(entries, time.Now())
		switch sub {
		case "list":
			if *asJSON {
				return writeJSON(env.stdout, mapRows(entries, queueView))
			}
			if err := printQueue(env.stdout, entries); err != nil {
				return err
			}
			// Last, so the table stays first for scripts; in a fleet it says whose queue this was.
			fmt.Fprintf(env.stdout, "instance %s (admin %s): %d queued\n", instance, d.addr, len(entries))
			return nil
		case "summary":
			fmt.Fprintf(env.stdout, "instance %s (admin %s)\n", instance, d.addr)
			return printQueueSummary(env.stdout, entries, time.Now())
		}
		for _, e := range entries {
			ids = append(ids, e.ID)
		}
	}
	failed := 0
	for _, id := range ids {
		if err := d.act(id, action); err != nil {
			fmt.Fprintf(env.stderr, "%s %s: %v\n", sub, id, err)
			failed++
			continue
		}
		fmt.Fprintf(env.stdout, "%s %s: ok\n", sub, id)
	}
	if failed > 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("mailgate queue %s: %d of %d failed", sub, failed, len(ids))}
	}
	return nil
}

// queueFilter selects queued messages for list, summary and the bulk actions.
type queueFilter struct {
	channel, transport, rcpt string
	olderThan                time.Duration
}

func (f queueFilter) empty() bool { return f == queueFilter{} }

func (f queueFilter) apply(entries []queue.Entry, now time.Time) []queue.Entry {
	var out []queue.Entry
	for _, e := range entries {
		if (f.channel != "" && e.Envelope.Channel != f.channel) || (f.transport != "" && e.Envelope.Transport != f.transport) ||
			(f.olderThan > 0 && now.Sub(e.Created) < f.olderThan) {
			continue
		}
		if f.rcpt != "" && !slices.ContainsFunc(e.Pending(), func(a string) bool { return strings.EqualFold(a, f.rcpt) }) {
			continue
		}
		out = append(out, e)
	}
	return out
}

func printQueue(w io.Writer, entries []queue.Entry) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE-ID\tCHANNEL\tTRANSPORT\tAGE\tATTEMPTS\tPENDING\tNEXT\tLAST-ERROR")
	for _, e := range entries {
		next := e.NextAttempt.Format(time.RFC3339)
		if e.Held {
			next = "held"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", e.ID, e.Envelope.Channel, e.Envelope.Transport,
			time.Since(e.Created).Round(time.Second), e.Attempts, strings.Join(e.Pending(), ","), next, oneLine(e.LastError))
	}
	return tw.Flush()
}

// printQueueSummary counts messages by transport (rows) and age (columns, qshape's buckets: where mail
// piles up, and since when), with totals.
func printQueueSummary(w io.Writer, entries []queue.Entry, now time.Time) error {
	summaryAges := []time.Duration{5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 40 * time.Minute,
		80 * time.Minute, 160 * time.Minute, 320 * time.Minute, 640 * time.Minute, 1280 * time.Minute}
	counts := map[string][]int{}
	var names []string
	total := make([]int, len(summaryAges)+1)
	for _, e := range entries {
		t := e.Envelope.Transport
		if counts[t] == nil {
			counts[t] = make([]int, len(summaryAges)+1)
			names = append(names, t)
		}
		col := sort.Search(len(summaryAges), func(i int) bool { return now.Sub(e.Created) <= summaryAges[i] })
		counts[t][col]++
		total[col]++
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "TRANSPORT\tTOTAL")
	for _, a := range summaryAges {
		fmt.Fprintf(tw, "\t≤%s", strings.TrimSuffix(a.String(), "0s"))
	}
	fmt.Fprintln(tw, "\tolder\t")
	row := func(name string, c []int) {
		sum := 0
		for _, n := range c {
			sum += n
		}
		fmt.Fprintf(tw, "%s\t%d", name, sum)
		for _, n := range c {
			fmt.Fprintf(tw, "\t%d", n)
		}
		fmt.Fprintln(tw, "\t")
	}
	row("TOTAL", total)
	for _, n := range names {
		row(n, counts[n])
	}
	return tw.Flush()
}

// act POSTs an action on one message; the daemon's answer is the error's text.
func (d *adminClient) act(id, action string) error {
	resp, err := d.call(http.MethodPost, "/queue/"+url.PathEscape(id)+"/"+action)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return errors.New(strings.TrimSpace(string(body)))
	}
	return nil
}

// show prints one message: its envelope, each recipient's state, its attempts and the header it will be
// sent with.
func (d *adminClient) show(env *cliEnv, id string, asJSON bool) error {
	resp, err := d.call(http.MethodGet, "/queue/"+url.PathEscape(id))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return &exitError{code: 1, msg: fmt.Sprintf("mailgate queue show %s: %s", id, strings.TrimSpace(string(body)))}
	}
	var m admin.QueueMessage
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return err
	}
	if asJSON {
		v := struct {
			queueEntryJSON
			Header map[string][]string `json:"header"`
		}{queueView(m.Entry), m.Header}
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	e := m.Entry
	w := env.stdout
	fmt.Fprintf(w, "queue id:     %s\n", e.ID)
	fmt.Fprintf(w, "channel:      %s (transport %s)\n", e.Envelope.Channel, e.Envelope.Transport)
	fmt.Fprintf(w, "envelope:     MAIL FROM:<%s>%s\n", e.Envelope.MailFrom, map[bool]string{true: ", Force TLS"}[e.Envelope.ForceTLS])
	fmt.Fprintf(w, "message-id:   <%s>, ticket %q, from principal %s\n", e.Envelope.MessageID, e.Envelope.Ticket, e.Envelope.Principal)
	fmt.Fprintf(w, "queued:       %s (%s ago), %d bytes\n", e.Created.UTC().Format(time.RFC3339), time.Since(e.Created).Round(time.Second), e.Size)
	next := e.NextAttempt.UTC().Format(time.RFC3339)
	if e.Held {
		next = "held (mailgate queue release " + e.ID + ")"
	}
	fmt.Fprintf(w, "attempts:     %d, next %s\n", e.Attempts, next)
	if e.LastError != "" {
		fmt.Fprintf(w, "last error:   %s\n", oneLine(e.LastError))
	}
	fmt.Fprintln(w, "recipients:")
	for _, r := range e.Recipients {
		line := "  " + r.Address + " — " + string(r.Status)
		if r.Code != 0 {
			line += fmt.Sprintf(" (%d %s %s)", r.Code, r.Enhanced, oneLine(r.Diagnostic))
		}
		fmt.Fprintln(w, line)
	}
	fmt.Fprintln(w, "header:")
	keys := make([]string, 0, len(m.Header))
	for k := range m.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range m.Header[k] {
			fmt.Fprintf(w, "  %s: %s\n", k, v)
		}
	}
	return nil
}

// cmdDrain asks a running instance to stop taking submissions and deliver its queue, then waits until
// the queue is empty (or --wait passes): the instance can then be stopped without delaying mail.
// Mail that cannot be delivered yet (deferred upstream) keeps it from emptying; the spool survives a
// restart anyway, so --wait bounds the wait rather than forcing it.
func cmdDrain(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "drain", "")
	af := addAdminFlags(fs)
	wait := fs.Duration("wait", 5*time.Minute, "how long to wait for the queue to empty (0: do not wait)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	a, err := af.client(ctx)
	if err != nil {
		return err
	}
	resp, err := a.call(http.MethodPost, "/drain")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("drain: admin listener %s answered %s", a.addr, resp.Status)
	}
	instance := resp.Header.Get(admin.InstanceHeader)
	fmt.Fprintf(env.stdout, "instance %s (admin %s): draining, submission stopped\n", instance, a.addr)
	deadline := time.Now().Add(*wait)
	for {
		entries, _, err := a.list()
		if err != nil {
			return err
		}
		if len(entries) == 0 {
			fmt.Fprintf(env.stdout, "instance %s: queue empty; safe to stop\n", instance)
			return nil
		}
		if !time.Now().Before(deadline) {
			return &exitError{code: 1, msg: fmt.Sprintf("instance %s: %d message(s) still queued after %v (deferred mail survives a restart in the spool)", instance, len(entries), *wait)}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// adminTarget works out which daemon a CLI command talks to and where its token is: flags first, then
// the configuration file, then the development data directory (where `mailgate serve` with no config
// records its admin address and token).
func adminTarget(addrFlag, cfgPath, dataDir, tokenFlag string) (addr, tokenFile string, err error) {
	addr, tokenFile = addrFlag, tokenFlag
	if cfgPath != "" {
		cfg, err := loadConfig(cfgPath)
		if err != nil {
			return "", "", fmt.Errorf("%s:\n%w", cfgPath, err)
		}
		if addr == "" {
			addr = cfg.Admin.Address
		}
		if tokenFile == "" {
			tokenFile = cfg.Admin.TokenFile
		}
	}
	if tokenFile == "" {
		tokenFile = filepath.Join(dataDir, config.DevelopmentTokenFile)
	}
	if addr == "" {
		b, err := os.ReadFile(filepath.Join(dataDir, developmentAdminAddressFile))
		addr = strings.TrimSpace(string(b))
		if err != nil || addr == "" {
			addr = "127.0.0.1:9465"
		}
	}
	return addr, tokenFile, nil
}
