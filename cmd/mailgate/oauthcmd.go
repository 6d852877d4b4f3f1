package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mailgate/mailgate/auth/oauth"
	"github.com/mailgate/mailgate/relay/admin"
	smtpdeliver "github.com/mailgate/mailgate/relay/deliver/smtp"
)

// preflight prints, before test-send sends, what mailgate finds on the way: for an OAuth server the
// token (decoded claims, never the token), then the SMTP server's TLS and AUTH offer.
func preflight(ctx context.Context, env *cliEnv, gen *generation, transport string, forceTLS bool) error {
	var fixes []string
	judge := func(v oauth.Verdict) {
		fmt.Fprintln(env.stdout, v)
		if !v.OK && !v.Unknown {
			fixes = append(fixes, v.Item)
		}
	}
	if src, ok := gen.oauth[transport]; ok {
		tok, err := src.Token(ctx)
		if err != nil {
			return fmt.Errorf("token: %v\nremedy: %s", err, oauth.RemedyOf(err))
		}
		info := oauth.DescribeToken(tok)
		fmt.Fprintf(env.stdout, "token obtained: %s\n", info)
		for _, v := range src.Judge(info, time.Now()) {
			judge(v)
		}
	}
	t, ok := gen.transports[transport].(*smtpdeliver.Transport)
	if ok {
		r, err := t.Probe(ctx, forceTLS)
		if r != nil {
			fmt.Fprintf(env.stdout, "server %s (%s): %s\n", r.Server, r.Addr, r.Banner)
			if r.TLS == "none" || r.TLS == "" {
				fmt.Fprintf(env.stdout, "tls: none (the server offers no STARTTLS)\n")
			} else {
				fmt.Fprintf(env.stdout, "tls: %s %s; certificate verified for %s: %v %s\n", r.TLS, r.TLSVersion, r.CertName, r.CertVerified, r.CertError)
			}
			fmt.Fprintf(env.stdout, "auth offered: %s; used: %s -> %s\n", strings.Join(r.AuthOffered, " "), r.AuthMechanism, r.AuthResult)
			if r.TokenFailure != nil {
				fmt.Fprintf(env.stdout, "token refused by the server: %+v\n", *r.TokenFailure)
			}
			for _, v := range probeVerdicts(r, forceTLS) {
				judge(v)
			}
		}
		if err != nil {
			return err
		}
	}
	if len(fixes) > 0 {
		return fmt.Errorf("not sent: fix %s first (the FIX lines above)", strings.Join(fixes, ", "))
	}
	return nil
}

// probeVerdicts judges what the probe of a custom SMTP server found: TLS with a verified certificate
// (required for credentials and Force TLS; without either, opportunistic TLS is enough), and the
// configured authentication offered and accepted after STARTTLS.
func probeVerdicts(r *smtpdeliver.ProbeReport, forceTLS bool) []oauth.Verdict {
	var out []oauth.Verdict
	needTLS := forceTLS || r.AuthResult != "not configured"
	switch {
	case (r.TLS == "none" || r.TLS == "") && needTLS:
		out = append(out, oauth.Verdict{Item: "tls", Msg: "the server offers no STARTTLS: mailgate never sends credentials (or Force TLS mail) in clear; use the server's submission port (587) or tls: implicit (465)"})
	case r.TLS == "none" || r.TLS == "":
		out = append(out, oauth.Verdict{Item: "tls", Unknown: true, Msg: "none offered; mail to this server travels in clear"})
	case !r.CertVerified && needTLS:
		out = append(out, oauth.Verdict{Item: "tls", Msg: "certificate not valid for " + r.CertName + " (" + r.CertError + "): set ca_file to the server's CA, or fix host"})
	case !r.CertVerified:
		out = append(out, oauth.Verdict{Item: "tls", Unknown: true, Msg: "encrypted, certificate not verified (" + r.CertError + "); enough without credentials or Force TLS"})
	default:
		out = append(out, oauth.Verdict{Item: "tls", OK: true, Msg: r.TLS + " " + r.TLSVersion + ", certificate verified for " + r.CertName})
	}
	switch {
	case r.AuthResult == "not configured" || r.AuthResult == "":
	case r.AuthResult == "ok":
		out = append(out, oauth.Verdict{Item: "auth", OK: true, Msg: "AUTH " + r.AuthMechanism + " accepted (offered after STARTTLS: " + strings.Join(r.AuthOffered, " ") + ")"})
	case len(r.AuthOffered) == 0:
		out = append(out, oauth.Verdict{Item: "auth", Msg: "the server offers no AUTH after STARTTLS: SMTP AUTH is off for it (Exchange: Set-CASMailbox -SmtpClientAuthenticationDisabled $false), or use a graph_servers mailbox"})
	default:
		out = append(out, oauth.Verdict{Item: "auth", Msg: "AUTH " + r.AuthMechanism + " failed: " + r.AuthResult})
	}
	return out
}

// localOAuthSources builds cfgPath's OAuth credentials in this process (store, keyring and secrets as
// the daemon would), by server name; done releases the store, storeKind names where refresh tokens are kept.
func localOAuthSources(ctx context.Context, env *cliEnv, cfgPath, dataDir string) (sources map[string]*oauth.Source, names []string, done func(), storeKind string, err error) {
	cfg, err := loadOrDevelopment(cfgPath, dataDir)
	if err != nil {
		return nil, nil, nil, "", err
	}
	storeKind = cfg.Store.Kind()
	d, err := commandDaemon(ctx, env, cfg)
	if err != nil {
		return nil, nil, nil, "", err
	}
	done = func() { d.budgets.Close(); d.store.Close() }
	defer func() {
		if err != nil {
			done()
		}
	}()
	resolver, err := newResolver(ctx, cfg)
	if err != nil {
		return nil, nil, nil, "", err
	}
	secrets, err := resolveSecrets(ctx, resolver, cfg)
	if err != nil {
		return nil, nil, nil, "", err
	}
	sources = map[string]*oauth.Source{}
	for i, s := range cfg.SMTPServers {
		if s.Auth != "microsoft-oauth" {
			continue
		}
		src, err := d.oauthSource(s.Name, fmt.Sprintf("smtp_servers[%d].oauth", i), s.OAuth, oauth.APISMTP, secrets, resolver)
		if err != nil {
			return nil, nil, nil, "", fmt.Errorf("smtp_servers[%d] (%s): %w", i, s.Name, err)
		}
		sources[s.Name] = src
		names = append(names, s.Name)
	}
	for i, g := range cfg.GraphServers {
		src, err := d.oauthSource(g.Name, fmt.Sprintf("graph_servers[%d].oauth", i), g.OAuth, oauth.APIGraph, secrets, resolver)
		if err != nil {
			return nil, nil, nil, "", fmt.Errorf("graph_servers[%d] (%s): %w", i, g.Name, err)
		}
		sources[g.Name] = src
		names = append(names, g.Name)
	}
	return sources, names, done, storeKind, nil
}

// cmdOAuthStatus shows every OAuth credential's state. It asks the running daemon (GET /oauth) so the
// answer is about the tokens mail is sent with; only when no daemon answers (not started yet, or its
// operator API is off) does it request tokens itself, and it says so. --local forces that.
func cmdOAuthStatus(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlags(env, "oauth status", "")
	af := addAdminFlags(fs)
	local := fs.Bool("local", false, "request tokens in this process instead of asking the running daemon")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var states []oauth.Status
	from := ""
	if !*local {
		var reason error
		states, from, reason = daemonOAuthStates(ctx, af)
		var unreachable *daemonUnreachableError
		var noToken *noAdminTokenError
		switch {
		case reason == nil:
		case errors.As(reason, &unreachable), errors.As(reason, &noToken):
			fmt.Fprintf(env.stderr, "mailgate oauth status: no daemon answered (%v); requesting tokens from this process\n", reason)
		default:
			return reason
		}
	}
	if from == "" {
		sources, names, done, _, err := localOAuthSources(ctx, env, *af.cfgPath, *af.dataDir)
		if err != nil {
			return err
		}
		defer done()
		for _, n := range names {
			states = append(states, sources[n].Check(ctx))
		}
		from = "this process (a fresh token request)"
	}
	fmt.Fprintf(env.stdout, "state of: %s\n", from)
	w := tabwriter.NewWriter(env.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SERVER\tFLOW\tMAILBOX\tHEALTHY\tVALID-UNTIL\tLAST-REFRESH\tLAST-ERROR\tREMEDY")
	unhealthy := 0
	for _, s := range states {
		if !s.Healthy {
			unhealthy++
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%s\t%s\t%s\t%s\n", s.Server, s.Flow, s.Mailbox, s.Healthy, fmtTime(s.ValidUntil), fmtTime(s.LastRefresh), oneLine(s.LastError), s.Remedy)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if unhealthy > 0 {
		// A monitoring script or an operator's shell sees it without parsing the table.
		return &exitError{code: 1, msg: fmt.Sprintf("mailgate oauth status: %d of %d credential(s) unhealthy", unhealthy, len(states))}
	}
	return nil
}

// noAdminTokenError: the admin token file could not be read, so the daemon cannot be asked.
type noAdminTokenError struct{ err error }

func (e *noAdminTokenError) Error() string { return "no admin token: " + e.err.Error() }
func (e *noAdminTokenError) Unwrap() error { return e.err }

// daemonOAuthStates reads the running daemon's credential states (GET /oauth) and names who answered.
func daemonOAuthStates(ctx context.Context, af adminFlags) ([]oauth.Status, string, error) {
	c, err := af.client(ctx)
	if err != nil {
		return nil, "", &noAdminTokenError{err}
	}
	resp, err := c.call(http.MethodGet, "/oauth")
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", fmt.Errorf("admin listener %s: GET /oauth: %s", c.addr, resp.Status)
	}
	var states []oauth.Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&states); err != nil {
		return nil, "", fmt.Errorf("admin listener %s: GET /oauth: %w", c.addr, err)
	}
	from := "the running daemon at " + c.addr
	if inst := resp.Header.Get(admin.InstanceHeader); inst != "" {
		from += " (instance " + inst + ")"
	}
	return states, from, nil
}

func cmdOAuth(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) == 0 || (args[0] != "authorize" && args[0] != "status") {
		return usageError("oauth", args)
	}
	if args[0] == "status" {
		return cmdOAuthStatus(ctx, env, args[1:])
	}
	fs := newFlags(env, "oauth authorize", "")
	cfgPath := fs.String("config", "", "configuration file")
	server := fs.String("server", "", "custom SMTP server or Graph server name")
	paste := fs.Bool("paste", false, "paste the redirect URL from the browser instead of receiving it on the redirect URL's loopback listener")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	sources, names, done, storeKind, err := localOAuthSources(ctx, env, *cfgPath, "mailgate-data")
	if err != nil {
		return err
	}
	defer done()
	if err != nil {
		return err
	}
	src, ok := sources[*server]
	if !ok {
		return fmt.Errorf("--server %q: no custom SMTP server with auth microsoft-oauth nor Graph server (have: %s)", *server, strings.Join(names, ", "))
	}
	a, err := src.BeginAuthorize()
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "Open this URL in a browser and sign in as the sending mailbox:\n\n  %s\n\n", a.URL)
	// The code arrives on the redirect URL's loopback listener (the browser runs on this machine) or
	// as the redirect URL pasted here (the browser runs elsewhere), whichever comes first; --paste
	// skips the listener.
	type result struct {
		code string
		err  error
	}
	got := make(chan result, 2)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	waiting := 1 // the paste
	if !*paste {
		waiting++
		fmt.Fprintf(env.stdout, "Waiting for the redirect on %s, or paste the URL the browser was redirected to: ", a.RedirectURL)
		go func() {
			c, err := src.ReceiveRedirect(wctx, a)
			got <- result{c, err}
		}()
	} else {
		fmt.Fprint(env.stdout, "Paste the URL the browser was redirected to: ")
	}
	go func() {
		line, _ := bufio.NewReader(env.stdin).ReadString('\n')
		if strings.TrimSpace(line) == "" {
			got <- result{err: errors.New("no redirect URL pasted")}
			return
		}
		c, err := a.ParsePastedRedirect(strings.TrimSpace(line))
		got <- result{c, err}
	}()
	var r result
	var failures []string
	for r.code == "" && waiting > 0 {
		select {
		case r = <-got:
			waiting--
			if r.err != nil {
				failures = append(failures, r.err.Error())
			}
		case <-wctx.Done():
			failures = append(failures, "no authorization code within 10 minutes")
			waiting = 0
		}
	}
	cancel()
	if r.code == "" {
		return errors.New(strings.Join(failures, "; "))
	}
	code := r.code
	fmt.Fprintln(env.stdout)
	info, err := src.Exchange(ctx, code, a.Verifier)
	if err != nil {
		return fmt.Errorf("%v\nremedy: %s", err, oauth.RemedyOf(err))
	}
	b, _ := json.Marshal(info)
	fmt.Fprintf(env.stdout, "authorized %s: %s\nrefresh token stored encrypted in %s\n%s\n", *server, info, storeKind, b)
	return nil
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
