package config

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// TestBrokenConfigListsEveryProblem checks that one pass reports every problem, each with its path.
func TestBrokenConfigListsEveryProblem(t *testing.T) {
	_, err := Load("testdata/broken.yaml")
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("Load = %v, want Problems", err)
	}
	// An unknown key is one problem among the others: it does not hide them.
	got := err.Error()
	want := []string{
		"admin.colour: unknown key (line 7)",
		"listeners[0].address: invalid address",
		"listeners[0].tls: must be starttls or implicit",
		"listeners[0].allow_insecure_auth: only allowed in a development config",
		"tls.cert_file: required",
		"business_units[0].time_zone: unknown time zone \"Mars/Olympus\"",
		"business_units[0].accepted_extensions[0]: write the extension with its period",
		"channels[1].from: must be a bare address",
		"channels[1].business_unit: unknown business unit \"Nowhere\"",
		"channels[1].transport: unknown server \"m365\"",
		"channels[1].template: unknown template \"missing\"",
		"channels[1].ticket.position: must be end or start",
		"channels[1].threading: ignore_in_reply_to threads by the ticket number",
		"channels[0].transport: outbox needs a top-level outbox: section",
		"smtp_servers[0].username: required with auth login",
		"smtp_servers[0].password: plain-text secrets are refused",
		"roles[0].channels.B: unknown permission \"delete\"",
		"roles[0].channels.Z: unknown channel \"Z\"",
		"users[0].password_hash: must be a bcrypt hash",
		"users[0].role: unknown role \"boss\"",
		"signatures[1].users[0]: user \"bob\" is in signatures \"s1\" and \"s2\"",
		"signatures[1].users[1]: unknown user \"carol\"",
		"store: required: store.path",
	}
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("missing problem %q in:\n%s", w, got)
		}
	}
	if t.Failed() {
		return
	}
	if n := len(ps); n != len(want) {
		t.Errorf("got %d problems, want %d:\n%s", n, len(want), got)
	}
}

func TestUnknownKeysEverywhere(t *testing.T) {
	_, err := Parse([]byte("listners: []\nchannels:\n  - name: a\n    form: x@example.com\nsmtp_servers:\n  - name: s\n    oauth:\n      tenant: t\n"))
	got := err.Error()
	for _, w := range []string{"listners: unknown key (line 1)", "channels[0].form: unknown key", "smtp_servers[0].oauth.tenant: unknown key"} {
		if !strings.Contains(got, w) {
			t.Errorf("missing %q in:\n%s", w, got)
		}
	}
}

// TestExampleAndDevelopmentAreValid: the example is valid but for the files it names under
// /etc/mailgate, which this machine lacks; the development default is valid once serve has written its
// admin token.
func TestExampleAndDevelopmentAreValid(t *testing.T) {
	_, err := Load("../examples/mailgate.yaml")
	var ps Problems
	if err != nil && !errors.As(err, &ps) {
		t.Fatal(err)
	}
	for _, p := range ps {
		if !strings.Contains(p.Msg, "/etc/mailgate/") || !strings.Contains(p.Msg, "no such file") {
			t.Errorf("examples/mailgate.yaml: %s", p)
		}
	}
	dir := t.TempDir()
	dev := Development(DevelopmentOptions{DataDir: dir, DemoPasswordHash: "$2a$10$abcdefghijklmnopqrstuv"})
	if err := dev.Validate(); err == nil || !strings.Contains(err.Error(), "admin.token_file") {
		t.Fatalf("development default without its token: %v", err)
	}
	if err := os.WriteFile(dev.Admin.TokenFile, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := dev.Validate(); err != nil {
		t.Fatalf("development default: %v", err)
	}
}

func TestDurations(t *testing.T) {
	var d Duration
	for in, want := range map[string]time.Duration{"5d": 120 * time.Hour, "30s": 30 * time.Second, "1.5h": 90 * time.Minute} {
		if err := yaml.Unmarshal([]byte(in), &d); err != nil || d.D() != want {
			t.Errorf("%s = %v, %v; want %v", in, d.D(), err, want)
		}
	}
	_, err := Parse([]byte("queue:\n  max_lifetime: forever\n"))
	if err == nil || !strings.Contains(err.Error(), `invalid duration "forever"`) {
		t.Fatalf("bad duration accepted: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	data, _ := os.ReadFile("../examples/mailgate.yaml")
	f.Add(data)
	f.Add([]byte("channels: [{name: a}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b)
		if (c == nil) == (err == nil) {
			t.Fatalf("Parse returned config %v and error %v", c != nil, err)
		}
	})
}
