package main

import (
	"context"
	"encoding/json"
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
	"github.com/mailgate/mailgate/relay/queue"
)

func cmdQueue(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "retry" && args[0] != "drop") {
		return usageError("queue", args)
	}
	sub := args[0]
	fs := newFlags(env, "queue "+sub, map[string]string{"list": "", "retry": "ID", "drop": "ID"}[sub])
	adminAddr := fs.String("admin", "", "admin listener of the running daemon (default: --config's admin.address, else the one the development daemon recorded in --data-dir, else 127.0.0.1:9465)")
	cfgPath := fs.String("config", "", "configuration file: its admin.address and admin.token_file")
	dataDir := fs.String("data-dir", "mailgate-data", "data directory of the development default (admin.token, admin.address)")
	tokenFile := fs.String("token-file", "", "file holding the admin bearer token (default: --config's admin.token_file, else --data-dir's admin.token)")
	asJSON := fs.Bool("json", false, "print a JSON array (list)")
	ids, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	addr, tokenPath, err := adminTarget(*adminAddr, *cfgPath, *dataDir, *tokenFile)
	if err != nil {
		return err
	}
	token, err := readAdminToken(tokenPath)
	if err != nil {
		return fmt.Errorf("%w (give the token's file with --token-file, or --config)", err)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	base := "http://" + addr
	call := func(method, path string) (*http.Response, error) {
		req, err := http.NewRequestWithContext(ctx, method, base+path, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+string(token))
		resp, err := client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("is mailgate serve running? %w", err)
		}
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusMisdirectedRequest {
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			return nil, fmt.Errorf("admin listener %s refused the request (%s): %s; is %s the daemon's admin.token_file?",
				addr, resp.Status, strings.TrimSpace(string(body)), tokenPath)
		}
		return resp, nil
	}
	if sub == "list" {
		resp, err := call(http.MethodGet, "/queue")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var entries []queue.Entry
		if err := json.NewDecoder(resp.Body).Decode(&entries); err != nil {
			return err
		}
		if *asJSON {
			return writeJSON(env.stdout, mapRows(entries, queueView))
		}
		w := tabwriter.NewWriter(env.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(w, "QUEUE-ID\tCHANNEL\tTRANSPORT\tAGE\tATTEMPTS\tPENDING\tNEXT\tLAST-ERROR")
		for _, e := range entries {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", e.ID, e.Envelope.Channel, e.Envelope.Transport,
				time.Since(e.Created).Round(time.Second), e.Attempts, strings.Join(e.Pending(), ","),
				e.NextAttempt.Format(time.RFC3339), oneLine(e.LastError))
		}
		return w.Flush()
	}
	if len(ids) != 1 {
		fs.Usage()
		return &exitError{code: 2}
	}
	id := ids[0]
	resp, err := call(http.MethodPost, "/queue/"+url.PathEscape(id)+"/"+sub)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", sub, id, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(env.stdout, "%s %s: ok\n", sub, id)
	return nil
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
