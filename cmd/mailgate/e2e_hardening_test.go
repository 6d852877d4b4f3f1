package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// Operator surfaces and check-config = serve, as the running binary shows them.

// TestAdminListenerLocked: on a running daemon, /metrics is open; the queue API and pprof answer 401
// without the token or with a wrong one and 200 with it; a foreign Host is refused with 421 even with
// the token; `queue list` without the token file is refused and says where the token should come from.
func TestAdminListenerLocked(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	in := newInstance(t, sinkChannels(sink.Addr))
	in.start()
	base := "http://" + in.admin
	if code, body := peertest.HTTP(t, "GET", base+"/metrics", "", ""); code != 200 || !strings.Contains(body, "mailgate_") {
		t.Errorf("/metrics without a token: %d", code)
	}
	for _, p := range []string{"/queue", "/debug/pprof/"} {
		for _, tok := range []string{"", "wrong-token-0123456789"} {
			if code, _ := peertest.HTTP(t, "GET", base+p, "", tok); code != http.StatusUnauthorized {
				t.Errorf("GET %s with token %q: %d, want 401", p, tok, code)
			}
		}
		if code, _ := peertest.HTTP(t, "GET", base+p, "", in.token); code != 200 {
			t.Errorf("GET %s with the token: %d, want 200", p, code)
		}
	}
	if code, _ := peertest.HTTP(t, "POST", base+"/queue/nonexistent/drop", "", ""); code != http.StatusUnauthorized {
		t.Errorf("POST drop without a token: %d, want 401", code)
	}
	_, port, _ := strings.Cut(in.admin, ":")
	for _, p := range []string{"/queue", "/metrics"} {
		if code, _ := peertest.HTTP(t, "GET", base+p, "rebind.attacker.example:"+port, in.token); code != http.StatusMisdirectedRequest {
			t.Errorf("GET %s with a foreign Host: %d, want 421", p, code)
		}
	}
	if code, _ := peertest.HTTP(t, "GET", base+"/queue", "localhost:"+port, in.token); code != 200 {
		t.Errorf("Host localhost: %d", code)
	}
	out, code := in.mailgate("queue", "list", "--admin", in.admin, "--data-dir", t.TempDir())
	if code != 1 || !strings.Contains(out, "admin.token") || !strings.Contains(out, "--token-file") {
		t.Errorf("queue list without a token: exit %d\n%s", code, out)
	}
	if out, code := in.mailgate("queue", "list", "--admin", in.admin, "--token-file", filepath.Join(in.dir, "admin.token")); code != 0 || !strings.HasPrefix(out, "QUEUE-ID") {
		t.Errorf("queue list --token-file: exit %d\n%s", code, out)
	}
}

// TestDevelopmentQueueFindsToken: `mailgate serve` with no configuration writes a random admin token
// (0600) into its data directory, and `mailgate queue list` run from the same directory, with no flags
// at all, finds the daemon and its token.
func TestDevelopmentQueueFindsToken(t *testing.T) {
	dir := t.TempDir()
	smtp := "127.0.0.1:" + strconv.Itoa(peertest.FreePort(t))
	admin := "127.0.0.1:" + strconv.Itoa(peertest.FreePort(t))
	proc := peertest.Start(t, "mailgate-dev", smtp, []string{"AWS_EC2_METADATA_DISABLED=true"},
		"sh", "-c", fmt.Sprintf("cd %s && exec %s serve --listen %s --admin %s", dir, binary, smtp, admin))
	if err := peertest.WaitPort(admin, 15*time.Second); err != nil {
		t.Fatalf("admin listener: %v", err)
	}
	_ = proc
	fi, err := os.Stat(filepath.Join(dir, "mailgate-data", "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Size() < 32 {
		t.Errorf("admin.token: mode %#o, %d bytes; want 0600 and a long random token", fi.Mode().Perm(), fi.Size())
	}
	for _, f := range []string{"mailgate.db", "mailgate.db-wal", "mailgate.db-shm"} {
		if fi, err := os.Stat(filepath.Join(dir, "mailgate-data", f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v, want mode 0600", f, err)
		}
	}
	if code, _ := peertest.HTTP(t, "GET", "http://"+admin+"/queue", "", ""); code != http.StatusUnauthorized {
		t.Errorf("development /queue without a token: %d, want 401", code)
	}
	cmd := exec.Command(binary, "queue", "list")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "QUEUE-ID") {
		t.Fatalf("queue list in the development directory: %v\n%s", err, out)
	}
}

// TestCheckConfigRefusesHardening: check-config (and serve, through the same path) refuses each of the
// operator-surface mistakes, all listed in one run with their paths and fixes; serve refuses to start
// on the same file with the same problems.
func TestCheckConfigRefusesHardening(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	in := newInstance(t, sinkChannels(sink.Addr))
	secret := filepath.Join(in.dir, "relay-password")
	if err := os.WriteFile(secret, []byte("pw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(secret, 0o644); err != nil {
		t.Fatal(err)
	}
	in.rewriteConfig("  address: "+in.admin+"\n  token_file: "+in.dir+"/admin.token\n", "  address: 0.0.0.0:"+strings.Split(in.admin, ":")[1]+"\n")
	in.rewriteConfig("tls:\n  cert_file: "+in.cert.CertFile, "tls:\n  cert_file: "+in.dir+"/missing-cert.pem")
	in.rewriteConfig("queue:\n", "limits:\n  max_recipients: -1\nqueue:\n")
	in.rewriteConfig("smtp_servers:\n", "colour: blue\nses:\n  region: eu-west-1\nevents:\n  address: "+in.smtp+"\nsmtp_servers:\n")
	in.rewriteConfig("trusted_networks:\n", "trusted_networks:\n  - cidr: 0.0.0.0/0\n    principal: anyone\n    role: agent\n    business_unit: BU\n"+
		"  - cidr: \"::/0\"\n    principal: anyone6\n    role: agent\n    business_unit: BU\n"+
		"  - cidr: 198.51.0.0/16\n    principal: wide\n    role: agent\n    business_unit: BU\n"+
		"  - cidr: 10.0.0.0/8\n    principal: private\n    role: agent\n    business_unit: BU\n")
	in.rewriteConfig("  - name: up\n", "  - name: up\n    auth: login\n    username: u\n    password: file:"+secret+"\n")
	wants := []string{
		"colour: unknown key",
		"admin.token_file: required when admin.address (0.0.0.0:",
		"tls.cert_file: cannot load the certificate and key (" + in.dir + "/missing-cert.pem",
		"events.address: " + in.smtp + " is also the address of listeners[0].address",
		"ses.event_topics: required",
		"trusted_networks[0].cidr: 0.0.0.0/0 covers the whole internet",
		"trusted_networks[1].cidr: ::/0 covers the whole internet",
		"trusted_networks[2].cidr: 198.51.0.0/16 is a public range wider than /24",
		"smtp_servers[0].password: " + secret + " has mode 0644: a secret file must not be readable by group or others; run chmod 600 " + secret,
		"limits.max_recipients: must not be negative",
	}
	out, code := in.mailgate("check-config", in.config)
	if code != 1 {
		t.Fatalf("check-config: exit %d, want 1\n%s", code, out)
	}
	for _, w := range wants {
		if !strings.Contains(out, in.config+": "+w) {
			t.Errorf("check-config lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "trusted_networks[3]") {
		t.Errorf("a private range was refused:\n%s", out)
	}
	if !strings.Contains(out, fmt.Sprintf("%d problem(s)", len(wants))) {
		t.Errorf("want exactly %d problems:\n%s", len(wants), out)
	}
	out, code = runBounded(t, 30*time.Second, []string{"AWS_EC2_METADATA_DISABLED=true"}, "", "serve", "--config", in.config)
	if code != 1 {
		t.Fatalf("serve: exit %d, want 1\n%s", code, out)
	}
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Errorf("serve does not refuse %q:\n%s", w, out)
		}
	}
}

// TestSIGHUPRestartNeeded: a reload that changes limits.* (read only at start) logs at warn which keys
// need a restart and counts them in mailgate_config_restart_needed_total; the queue's retry schedule and
// worker count are applied live and not listed; the reload of the rest succeeds.
func TestSIGHUPRestartNeeded(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	in := newInstance(t, sinkChannels(sink.Addr))
	in.start()
	in.rewriteConfig("queue:\n  retry_initial: 300ms\n", "limits:\n  max_recipients: 7\nqueue:\n  workers_per_transport: 3\n  retry_initial: 400ms\n")
	in.sighup(1)
	logs := in.logs()
	if !strings.Contains(logs, `msg="config reloaded"`) || !strings.Contains(logs, "level=WARN") ||
		!strings.Contains(logs, "settings=limits.max_recipients\n") {
		t.Errorf("reload log does not name the keys that need a restart:\n%s", logs)
	}
	_, metrics := httpGet(t, "http://"+in.admin+"/metrics")
	if want := `mailgate_config_restart_needed_total{key="limits.max_recipients"} 1`; !strings.Contains(metrics, want) {
		t.Errorf("/metrics lacks %s", want)
	}
	for _, live := range []string{"queue.retry_initial", "queue.workers_per_transport"} {
		if strings.Contains(metrics, `key="`+live+`"`) {
			t.Errorf("%s is applied live but counted as needing a restart", live)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTestSendAddressValidator: test-send refuses the recipient addresses submission would refuse at
// RCPT (the one validator, relay.ValidAddress), before building any transport.
func TestTestSendAddressValidator(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	in := newInstance(t, sinkChannels(sink.Addr))
	for _, to := range []string{"customer@localhost", "a..b@example.net", "x@[192.0.2.1]"} {
		out, code := in.mailgate("test-send", "--config", in.config, "--channel", "Support", "--to", to)
		if code != 2 || !strings.Contains(out, "is not a mail address") {
			t.Errorf("test-send --to %s: exit %d\n%s", to, code, out)
		}
	}
	if n := sink.Count(); n != 0 {
		t.Errorf("the sink received %d messages", n)
	}
}
