package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
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
		return nil, fmt.Errorf("is mailgate serve running? %w", err)
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusMisdirectedRequest {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("admin listener %s refused the request (%s): %s; is %s the daemon's admin.token_file?",
			a.addr, resp.Status, strings.TrimSpace(string(body)), a.tokenPath)
	}
	return resp, nil
}

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

func cmdQueue(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "retry" && args[0] != "drop") {
		return &exitError{code: 2, msg: "usage: mailgate queue list | retry ID | drop ID [--config FILE | --data-dir DIR] [--admin ADDR] [--token-file FILE]"}
	}
	sub := args[0]
	fs := newFlags(env, "queue "+sub, map[string]string{"list": "", "retry": "ID", "drop": "ID"}[sub])
	af := addAdminFlags(fs)
	ids, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	a, err := af.client(ctx)
	if err != nil {
		return err
	}
	if sub == "list" {
		entries, instance, err := a.list()
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(env.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(w, "QUEUE-ID\tCHANNEL\tTRANSPORT\tAGE\tATTEMPTS\tPENDING\tNEXT\tLAST-ERROR")
		for _, e := range entries {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", e.ID, e.Envelope.Channel, e.Envelope.Transport,
				time.Since(e.Created).Round(time.Second), e.Attempts, strings.Join(e.Pending(), ","),
				e.NextAttempt.Format(time.RFC3339), oneLine(e.LastError))
		}
		if err := w.Flush(); err != nil {
			return err
		}
		// Last, so the table stays first for scripts; in a fleet it says whose queue this was.
		fmt.Fprintf(env.stdout, "instance %s (admin %s): %d queued\n", instance, a.addr, len(entries))
		return nil
	}
	if len(ids) != 1 {
		fs.Usage()
		return &exitError{code: 2}
	}
	id := ids[0]
	resp, err := a.call(http.MethodPost, "/queue/"+url.PathEscape(id)+"/"+sub)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s on instance %s: %s", sub, id, resp.Header.Get(admin.InstanceHeader), strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(env.stdout, "%s %s: ok (instance %s)\n", sub, id, resp.Header.Get(admin.InstanceHeader))
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
