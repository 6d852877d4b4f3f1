package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/relay/peertest"
)

// TestCLIConventions: every command and subcommand answers --help with its own usage and exit 0; an
// unknown flag is a usage error, exit 2, said once; version names the build.
func TestCLIConventions(t *testing.T) {
	in := newInstance(t, sinkChannels(peertest.SMTPSink(t, "-a").Addr))
	names := make([]string, 0, len(commands()))
	for n := range commands() {
		names = append(names, n)
	}
	sort.Strings(names)
	sub := map[string][]string{"bounces": {"list", "remove"}, "queue": {"list"}, "log": {"search"}, "secret": {"encrypt", "keygen"},
		"oauth": {"status", "authorize"}, "config": {"show"}}
	for _, name := range names {
		variants := [][]string{{name}}
		for _, s := range sub[name] {
			variants = append(variants, []string{name, s})
		}
		for _, v := range variants {
			out, code := in.mailgate(append(v, "--help")...)
			if code != 0 || !strings.Contains(out, "usage: mailgate "+v[0]) {
				t.Errorf("%s --help: exit %d\n%s", strings.Join(v, " "), code, out)
			}
			if len(v) > 1 || len(sub[name]) == 0 {
				out, code = in.mailgate(append(v, "--no-such-flag")...)
				if code != 2 || strings.Count(out, "no-such-flag") != 1 {
					t.Errorf("%s --no-such-flag: exit %d, want 2 with the error said once\n%s", strings.Join(v, " "), code, out)
				}
			}
		}
	}
	out, code := in.mailgate("version")
	if code != 0 || !regexp.MustCompile(`^mailgate \S+ \(revision \S+, built \S+, go1\.`).MatchString(out) {
		t.Errorf("version: exit %d: %q", code, out)
	}
}

// TestConfigShow: `config show` prints the configuration with every default filled in; what it prints
// is itself a valid configuration (check-config passes on it) and shows secrets as references only.
func TestConfigShow(t *testing.T) {
	in := newInstance(t, sinkChannels(peertest.SMTPSink(t, "-a").Addr))
	out, code := in.mailgate("config", "show", "--config", in.config)
	if code != 0 {
		t.Fatalf("config show: exit %d\n%s", code, out)
	}
	for _, want := range []string{"attempt_timeout: 10m0s", "workers_per_transport: 16", "max_recipients: 100", "max_connections: 500"} {
		if !strings.Contains(out, want) {
			t.Errorf("config show lacks the default %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, alicePassword) {
		t.Fatal("config show printed a password")
	}
	shown := filepath.Join(t.TempDir(), "shown.yaml")
	if err := os.WriteFile(shown, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, code := in.mailgate("check-config", shown); code != 0 {
		t.Fatalf("check-config on config show's output: exit %d\n%s", code, out)
	}
	if out, code := in.mailgate("config", "show"); code != 0 || !strings.Contains(out, "development: true") {
		t.Fatalf("config show of the development default: exit %d\n%s", code, out)
	}
}

// TestTestSendDevelopmentDefault: on a fresh machine, before serve ever ran, test-send goes through the
// development default's outbox transport.
func TestTestSendDevelopmentDefault(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(binary, "test-send", "--channel", "Support", "--to", "customer@example.net")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if code := exitCode(t, err); code != 0 || !strings.Contains(string(out), "250 2.0.0 written to mailgate-data/outbox/") {
		t.Fatalf("test-send on the development default: exit %d\n%s", code, out)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "mailgate-data", "outbox", "*.eml")); len(files) != 1 {
		t.Fatalf("outbox holds %v", files)
	}
}
