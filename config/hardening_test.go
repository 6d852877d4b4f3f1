package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// baseConfig is the valid production configuration testdata/broken's files share.
func baseConfig(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("testdata/broken/unknown-key.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Replace(string(data), "outbound_flows:", "outbound_flow:", 1)
}

// edit replaces old (which must occur) with repl in the YAML.
func edit(t *testing.T, yaml, old, repl string) string {
	t.Helper()
	if !strings.Contains(yaml, old) {
		t.Fatalf("base config lacks %q", old)
	}
	return strings.Replace(yaml, old, repl, 1)
}

// problems parses yaml and returns its problems as "path: msg" lines.
func problems(t *testing.T, yaml string) []string {
	t.Helper()
	_, err := Parse([]byte(yaml))
	var ps Problems
	if err != nil && !errors.As(err, &ps) {
		t.Fatalf("Parse: %v", err)
	}
	var lines []string
	for _, p := range ps {
		lines = append(lines, p.String())
	}
	return lines
}

// wantProblems asserts that each want is a prefix of exactly one problem and that there are no others.
func wantProblems(t *testing.T, got []string, want ...string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
		return
	}
	for _, w := range want {
		n := 0
		for _, g := range got {
			if strings.HasPrefix(g, w) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("want one problem starting %q in:\n%s", w, strings.Join(got, "\n"))
		}
	}
}

// TestConfigAgreesWithServe: what serve would fail on is a problem here too, all found in one run:
// missing certificate files, two listeners on one address, a port serve cannot bind, negative limits
// (never silently replaced by defaults), an address the submission side would refuse.
func TestConfigAgreesWithServe(t *testing.T) {
	base := baseConfig(t)
	if got := problems(t, base); len(got) != 0 {
		t.Fatalf("base: %v", got)
	}
	y := edit(t, base, "cert_file: testdata/tls/cert.pem", "cert_file: testdata/tls/missing.pem")
	y = edit(t, y, "  - name: submission\n    address: 0.0.0.0:587\n", "  - name: submission\n    address: 0.0.0.0:587\n  - name: again\n    address: 127.0.0.1:587\n  - name: badport\n    address: 127.0.0.1:http\n")
	y = edit(t, y, "admin:\n  address: 127.0.0.1:9465\n", "admin:\n  address: 127.0.0.1:9465\nlimits:\n  max_connections: -1\n  max_recipients: -5\n  read_timeout: -1s\nqueue:\n  workers_per_transport: -2\n")
	y = edit(t, y, "from: support@example.com", "from: support@localhost")
	y = edit(t, y, "    port: 587\n", "    port: 587\n    max_connections: -3\n")
	y = edit(t, y, "hostname:", "colour: blue\nhostname:")
	wantProblems(t, problems(t, y),
		"colour: unknown key",
		"listeners[1].address: 127.0.0.1:587 is also the address of listeners[0].address",
		`listeners[2].address: invalid port in "127.0.0.1:http"`,
		"tls.cert_file: cannot load the certificate and key (testdata/tls/missing.pem, testdata/tls/key.pem): stat testdata/tls/missing.pem: no such file",
		"limits.max_connections: must not be negative",
		"limits.max_recipients: must not be negative",
		"limits.read_timeout: must not be negative",
		"queue.workers_per_transport: must not be negative",
		"smtp_servers[0].max_connections: must not be negative",
		`channels[0].from: must be a bare address such as support@example.com (got "support@localhost")`,
	)
	// The admin listener may not share the submission address either.
	wantProblems(t, problems(t, edit(t, base, "address: 127.0.0.1:9465", "address: 127.0.0.1:587")),
		"admin.address: 127.0.0.1:587 is also the address of listeners[0].address")
}

// TestAdminToken: a non-loopback admin listener needs a token file; the file must be private and long
// enough; loopback without a token is allowed (the operator API is then off).
func TestAdminToken(t *testing.T) {
	base := baseConfig(t)
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", "0123456789abcdef0123456789abcdef\n", 0o600)
	wantProblems(t, problems(t, edit(t, base, "address: 127.0.0.1:9465", "address: 0.0.0.0:9465")),
		"admin.token_file: required when admin.address (0.0.0.0:9465) is not loopback")
	wantProblems(t, problems(t, edit(t, base, "address: 127.0.0.1:9465", "address: 10.0.0.5:9465\n  token_file: "+good+"\n  allowed_hosts: [mailgate-1.internal]")))
	wantProblems(t, problems(t, edit(t, base, "address: 127.0.0.1:9465", "address: 127.0.0.1:9465\n  token_file: "+write("open", "0123456789abcdef0123\n", 0o644))),
		"admin.token_file: "+filepath.Join(dir, "open")+" has mode 0644")
	wantProblems(t, problems(t, edit(t, base, "address: 127.0.0.1:9465", "address: 127.0.0.1:9465\n  token_file: "+write("short", "abc\n", 0o600))),
		"admin.token_file: "+filepath.Join(dir, "short")+" holds fewer than 16 characters")
	wantProblems(t, problems(t, edit(t, base, "address: 127.0.0.1:9465", "address: 127.0.0.1:9465\n  allowed_hosts: [\"http://x:80\"]")),
		"admin.allowed_hosts[0]:")
}

// TestTrustedNetworksNotTheInternet: ranges covering the internet or a public range wider than /24
// (IPv6: /48) are refused; loopback and private ranges of any size, and narrow public ones, are not.
func TestTrustedNetworksNotTheInternet(t *testing.T) {
	base := baseConfig(t)
	tn := func(cidrs ...string) string {
		y := base + "trusted_networks:\n"
		for _, c := range cidrs {
			y += "  - cidr: \"" + c + "\"\n    principal: app-" + strings.NewReplacer(".", "-", ":", "-", "/", "-").Replace(c) + "\n    role: agent\n    business_unit: Retail\n"
		}
		return y
	}
	wantProblems(t, problems(t, tn("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
		"fd00::/8", "::1/128", "198.51.100.0/24", "2001:db8:1::/48", "203.0.113.7/32")))
	wantProblems(t, problems(t, tn("0.0.0.0/0", "::/0", "8.0.0.0/8", "198.51.0.0/23", "2001:db8::/32", "::ffff:0:0/96", "0.0.0.0/1")),
		"trusted_networks[0].cidr: 0.0.0.0/0 covers the whole internet",
		"trusted_networks[1].cidr: ::/0 covers the whole internet",
		"trusted_networks[2].cidr: 8.0.0.0/8 is a public range wider than /24",
		"trusted_networks[3].cidr: 198.51.0.0/23 is a public range wider than /24",
		"trusted_networks[4].cidr: 2001:db8::/32 is a public range wider than /48",
		"trusted_networks[5].cidr: ::ffff:0:0/96 covers the whole internet",
		"trusted_networks[6].cidr: 0.0.0.0/1 is a public range wider than /24",
	)
}

// TestSESNeedsTopicsAndEventsListener: SES without event_topics is refused (any AWS account's topic
// could post signed fake bounces), as is SES without an events listener or an events listener without
// SES; the events listener's certificate must load.
func TestSESNeedsTopicsAndEventsListener(t *testing.T) {
	base := baseConfig(t)
	wantProblems(t, problems(t, base+"ses:\n  region: eu-west-1\n"),
		"ses.event_topics: required",
		"events.address: required with ses")
	wantProblems(t, problems(t, base+"ses:\n  region: eu-west-1\n  event_topics: [arn:aws:sns:eu-west-1:123456789012:ses-events, not-an-arn]\n"+
		"events:\n  address: 0.0.0.0:8443\n  cert_file: testdata/tls/cert.pem\n  key_file: testdata/tls/nope.pem\n"),
		`ses.event_topics[1]: "not-an-arn" is not an SNS topic ARN`,
		"events.cert_file: cannot load the certificate and key")
	wantProblems(t, problems(t, base+"ses:\n  region: eu-west-1\n  event_topics: [arn:aws:sns:eu-west-1:123456789012:ses-events]\n"+
		"events:\n  address: 0.0.0.0:8443\n  cert_file: testdata/tls/cert.pem\n  key_file: testdata/tls/key.pem\n"))
	wantProblems(t, problems(t, base+"events:\n  address: 127.0.0.1:8080\n"), "events: only used with ses")
}

// TestFileSecretChecked: a file: secret is checked where it is configured — private, at most 64 KiB,
// a regular file — with the path and the fix in the problem.
func TestFileSecretChecked(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "pw")
	if err := os.WriteFile(open, []byte("pw\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	y := edit(t, baseConfig(t), "    port: 587\n", "    port: 587\n    auth: login\n    username: u\n    password: file:"+open+"\n")
	wantProblems(t, problems(t, y), "smtp_servers[0].password: "+open+" has mode 0644: a secret file must not be readable by group or others; run chmod 600 "+open)
	y = edit(t, baseConfig(t), "    port: 587\n", "    port: 587\n    auth: login\n    username: u\n    password: file:/dev/zero\n")
	wantProblems(t, problems(t, y), "smtp_servers[0].password: /dev/zero is not a regular file")
	// A FIFO is refused without being opened (opening it would wait for a writer), as are
	// certificate and CA files that are not regular files.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	y = edit(t, baseConfig(t), "    port: 587\n", "    port: 587\n    ca_file: /dev/zero\n    auth: login\n    username: u\n    password: file:"+fifo+"\n")
	y = edit(t, y, "cert_file: testdata/tls/cert.pem", "cert_file: "+fifo)
	wantProblems(t, problems(t, y),
		"tls.cert_file: cannot load the certificate and key ("+fifo+", testdata/tls/key.pem): "+fifo+" is not a regular file",
		"smtp_servers[0].ca_file: /dev/zero is not a regular file",
		"smtp_servers[0].password: "+fifo+" is not a regular file")
}

// TestMailFromRefusedWhereTheAPIChoosesIt: SES and Graph choose the envelope sender themselves, so a
// channel's mail_from there is refused with the reason instead of being silently ignored (or, as SES's
// FromEmailAddress, changing the sending identity).
func TestMailFromRefusedWhereTheAPIChoosesIt(t *testing.T) {
	ses := "ses:\n  region: eu-west-1\n  event_topics: [arn:aws:sns:eu-west-1:123456789012:ses-events]\n" +
		"events:\n  address: 127.0.0.1:8443\n"
	yaml := edit(t, baseConfig(t)+ses, "    transport: relay\n", "    transport: ses\n    mail_from: bounces@example.com\n")
	wantProblems(t, problems(t, yaml), "channels[0].mail_from: not used with transport ses: SES sets the envelope sender itself")
	if got := problems(t, yaml); len(got) == 1 && !strings.Contains(got[0], "bounce.example.com") {
		t.Errorf("the remedy names the custom MAIL FROM domain to configure: %s", got[0])
	}
	wantProblems(t, problems(t, edit(t, baseConfig(t)+ses, "    transport: relay\n", "    transport: ses\n    ses_tenant_name: retail\n"+
		"    ses_identity_arn: arn:aws:ses:eu-west-1:123456789012:identity/example.com\n")))
	wantProblems(t, problems(t, edit(t, baseConfig(t)+ses, "    transport: relay\n", "    transport: ses\n    ses_identity_arn: example.com\n")),
		`channels[0].ses_identity_arn: "example.com" is not an SES identity ARN`)
	wantProblems(t, problems(t, edit(t, baseConfig(t), "    transport: relay\n", "    transport: relay\n    ses_tenant_name: retail\n")),
		"channels[0].ses_tenant_name: only used with transport ses")
}
