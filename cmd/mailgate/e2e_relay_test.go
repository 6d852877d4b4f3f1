package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// sinkChannels relays every channel to one upstream named "up" at addr.
func sinkChannels(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf(`
smtp_servers:
  - name: up
    host: %s
    port: %s
    tls: starttls
    max_connections: 4
channels:
  - name: Support
    from: support@example.com
    display_name: Example Support
    business_unit: BU
    transport: up
    outbound_flow: true
    mail_from: bounces@example.com
  - name: Quiet
    from: quiet@example.com
    business_unit: BU
    transport: up
    outbound_flow: false
  - name: Secure
    from: secure@example.com
    business_unit: BU
    transport: up
    outbound_flow: true
    force_tls: true
  - name: Other
    from: other@example.com
    business_unit: BU
    transport: up
    outbound_flow: true
roles:
  - name: agent
    channels:
      Support: [reply, outbound]
      Secure: [reply, outbound]
      Quiet: [reply, outbound]
  - name: limited
    channels:
      Support: [reply]
trusted_networks:
  - cidr: 127.0.0.0/8
    principal: load-app
    role: agent
    business_unit: BU
`, host, port)
}

// TestSwaksToSmtpSink submits with AUTH LOGIN and AUTH PLAIN over STARTTLS and checks what smtp-sink
// received: the message, and the envelope mailgate set (channel MAILFROM, not the client's).
func TestSwaksToSmtpSink(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	in := newInstance(t, sinkChannels(sink.Addr))
	in.start()
	for i, mech := range []string{"LOGIN", "PLAIN"} {
		out, code := in.swaks("--auth", mech, "--from", "agent-says@client.example", "--to", "customer@example.net",
			"--h-From", "support@example.com", "--h-Subject", "hello via "+mech, "--body", "Hi there, "+mech)
		if code != 0 || !strings.Contains(out, "250 2.0.0 queued as") {
			t.Fatalf("swaks %s: exit %d\n%s", mech, code, out)
		}
		sink.WaitCount(t, i+1, 15*time.Second)
	}
	msgs := sink.Messages(t)
	if len(msgs) != 2 {
		t.Fatalf("sink has %d messages, want 2", len(msgs))
	}
	for i, mech := range []string{"LOGIN", "PLAIN"} {
		// Dumps written in the same second sort in no particular order: find each by its subject.
		var m string
		for _, cand := range msgs {
			if strings.Contains(cand, "hello via "+mech) {
				m = cand
			}
		}
		for _, want := range []string{"X-Mail-Args: <bounces@example.com>", "X-Rcpt-Args: <customer@example.net>", "hello via " + mech, "Hi there, " + mech, "Example Support"} {
			if !strings.Contains(m, want) {
				t.Errorf("message %d lacks %q:\n%s", i, want, m)
			}
		}
		if strings.Contains(m, "agent-says@client.example") {
			t.Errorf("the client's MAIL FROM leaked into the upstream envelope:\n%s", m)
		}
	}
}

// TestOpenRelayRefusals checks every way in without permission, with its exact reply code.
func TestOpenRelayRefusals(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	in := newInstance(t, sinkChannels(sink.Addr))
	in.start()
	host, port, _ := net.SplitHostPort(in.smtp)
	plain := []string{"--server", host, "--port", port, "--from", "x@example.com", "--to", "customer@example.net", "--h-From", "support@example.com"}

	// (MAIL without AUTH is TestNoAuthRefused: here 127.0.0.0/8 is a trusted network.)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"wrong password", []string{"--tls", "--tls-verify", "--tls-ca-path", in.cert.CertFile, "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", "wrong"}, "535 5.7.8"},
		// AUTH is not even offered before STARTTLS (RFC 4954 §4: no plaintext credentials).
		{"auth before TLS", []string{"--auth", "PLAIN", "--auth-user", "alice", "--auth-password", alicePassword}, "did not advertise authentication"},
	}
	for _, c := range cases {
		out, code := peertest.Swaks(t, append(plain, c.args...)...)
		if code == 0 || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, want a refusal containing %q\n%s", c.name, code, c.want, out)
		}
		if c.name == "auth before TLS" && strings.Contains(out, "235 ") {
			t.Errorf("AUTH succeeded without TLS:\n%s", out)
		}
	}
	// A client that sends AUTH anyway before STARTTLS is refused, and its credentials are not checked.
	raw := rawCommands(t, in.smtp, "EHLO probe.example", "AUTH PLAIN AGFsaWNlAHNlY3JldC1wdw==")
	if !strings.Contains(raw, "\n5") || strings.Contains(raw, "235") {
		t.Errorf("AUTH before STARTTLS was not refused:\n%s", raw)
	}
	t.Logf("AUTH before STARTTLS: %s", raw[strings.LastIndex(strings.TrimSpace(raw), "\n")+1:])
	// From a channel alice's role has no permission on.
	out, code := in.swaks("--to", "customer@example.net", "--h-From", "other@example.com")
	if code == 0 || !strings.Contains(out, "550 5.7.1") {
		t.Errorf("From of a channel without permission: exit %d\n%s", code, out)
	}
	// New outbound (no In-Reply-To, no ticket) on a channel whose outbound flow is off.
	out, code = in.swaks("--to", "customer@example.net", "--h-From", "quiet@example.com")
	if code == 0 || !strings.Contains(out, "550 5.7.1") {
		t.Errorf("new outbound on a channel with outbound off: exit %d\n%s", code, out)
	}
	// ... while a reply on that channel is fine.
	out, code = in.swaks("--to", "customer@example.net", "--h-From", "quiet@example.com", "--add-header", "In-Reply-To: <abc@customer.example>")
	if code != 0 {
		t.Errorf("reply on a channel with outbound off refused: exit %d\n%s", code, out)
	}
	// bob's role has reply but not outbound on Support.
	host2, port2, _ := net.SplitHostPort(in.smtp)
	out, code = peertest.Swaks(t, "--server", host2, "--port", port2, "--tls", "--tls-verify", "--tls-ca-path", in.cert.CertFile,
		"--auth", "LOGIN", "--auth-user", "bob", "--auth-password", alicePassword, "--to", "customer@example.net", "--h-From", "support@example.com")
	if code == 0 || !strings.Contains(out, "550 5.7.1") {
		t.Errorf("new outbound without the role's outbound permission: exit %d\n%s", code, out)
	}
	if n := sink.Count(); n != 1 {
		t.Errorf("sink received %d messages, want exactly the one permitted reply", n)
	}
}

// TestNoAuthRefused: without AUTH and outside trusted networks, MAIL is refused with 530 5.7.0.
func TestNoAuthRefused(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	in := newInstance(t, strings.Replace(sinkChannels(sink.Addr), "127.0.0.0/8", "192.0.2.0/24", 1))
	in.start()
	host, port, _ := net.SplitHostPort(in.smtp)
	out, code := peertest.Swaks(t, "--server", host, "--port", port, "--tls", "--tls-verify", "--tls-ca-path", in.cert.CertFile,
		"--from", "x@example.com", "--to", "customer@example.net", "--h-From", "support@example.com")
	if code == 0 || !strings.Contains(out, "530 5.7.0") {
		t.Fatalf("MAIL without AUTH: exit %d\n%s", code, out)
	}
}

// smtpConversation runs a raw plain-text SMTP dialogue as the trusted-network principal, sending data
// verbatim after DATA, and returns everything the server said.
func smtpConversation(t *testing.T, addr string, data string) string {
	t.Helper()
	return rawExchange(t, addr, "EHLO probe.example\r\n", "MAIL FROM:<x@example.com>\r\n",
		"RCPT TO:<customer@example.net>\r\n", "DATA\r\n", data, "QUIT\r\n")
}

// rawCommands sends each command line and returns every reply line.
func rawCommands(t *testing.T, addr string, cmds ...string) string {
	t.Helper()
	sends := make([]string, len(cmds))
	for i, c := range cmds {
		sends[i] = c + "\r\n"
	}
	return rawExchange(t, addr, sends...)
}

// rawExchange reads the greeting, then writes each chunk exactly as given and reads the (possibly
// multi-line) reply to it; it returns everything the server said.
func rawExchange(t *testing.T, addr string, chunks ...string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	var got strings.Builder
	read := func() {
		for {
			line, err := r.ReadString('\n')
			got.WriteString(line)
			if err != nil || len(line) < 4 || line[3] != '-' {
				return
			}
		}
	}
	read()
	for _, chunk := range chunks {
		_, _ = io.WriteString(c, chunk)
		read()
	}
	return got.String()
}

// TestSmugglingProbes sends the SMTP smuggling variants; none may ever produce a second message upstream.
func TestSmugglingProbes(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	in := newInstance(t, sinkChannels(sink.Addr))
	in.start()
	head := "From: support@example.com\r\nTo: customer@example.net\r\nSubject: probe\r\n\r\nfirst\r\n"
	smuggled := "MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\nFrom: support@example.com\r\nSubject: SMUGGLED\r\n\r\nsecond\r\n"
	probes := map[string]string{
		"LF.CRLF": head + "\n.\r\n" + smuggled + ".\r\n",
		"CRLF.LF": head + "\r\n.\n" + smuggled + ".\r\n",
		"CR.CRLF": head + "\r.\r\n" + smuggled + ".\r\n",
		"bare LF": head + "a line\nwith a bare LF\r\n.\r\n",
		"bare CR": head + "a line\rwith a bare CR\r\n.\r\n",
	}
	for name, data := range probes {
		out := smtpConversation(t, in.smtp, data)
		if strings.Contains(out, "250 2.0.0 queued") {
			t.Errorf("%s: accepted:\n%s", name, out)
		}
		if !strings.Contains(out, "5.6.0") && !strings.Contains(out, "500 ") && !strings.Contains(out, "502 ") && !strings.Contains(out, "503 ") {
			t.Errorf("%s: no clear refusal:\n%s", name, out)
		}
	}
	// A clean message afterwards still goes through, and it is the only one upstream.
	out := smtpConversation(t, in.smtp, head+".\r\n")
	if !strings.Contains(out, "250 2.0.0 queued") {
		t.Fatalf("clean message refused:\n%s", out)
	}
	sink.WaitCount(t, 1, 15*time.Second)
	time.Sleep(500 * time.Millisecond)
	for _, m := range sink.Messages(t) {
		if strings.Contains(m, "SMUGGLED") || strings.Contains(m, "victim@example.net") {
			t.Fatalf("a smuggled message reached the upstream:\n%s", m)
		}
	}
	if n := sink.Count(); n != 1 {
		t.Fatalf("upstream received %d messages, want 1", n)
	}
}

// TestForceTLS: to smtp-sink (no STARTTLS) and to a STARTTLS server with an untrusted certificate,
// a Force TLS channel sends nothing and records the recipient as bounced (fault tls) without
// suppressing it: the relay's missing TLS is not the customer's fault (DESIGN §4), so the next
// submission to that recipient is accepted. /readyz reports the Force TLS alert.
func TestForceTLS(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	node := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{}) // self-signed: untrusted by mailgate
	for _, up := range []struct{ name, addr string }{{"smtp-sink", sink.Addr}, {"untrusted-cert", node.Addr}} {
		t.Run(up.name, func(t *testing.T) {
			in := newInstance(t, sinkChannels(up.addr))
			in.start()
			rcpt := "tls-" + up.name + "@example.net"
			out, code := in.swaks("--to", rcpt, "--h-From", "secure@example.com", "--h-Subject", "secret stuff")
			if code != 0 {
				t.Fatalf("submission refused: exit %d\n%s", code, out)
			}
			waitFor(t, 15*time.Second, "the bounce", func() bool {
				out, _ := in.mailgate("bounces", "list", "--config", in.config)
				return strings.Contains(out, rcpt)
			})
			out, _ = in.mailgate("bounces", "list", "--config", in.config)
			if !strings.Contains(strings.ToLower(out), "tls required") || !regexp.MustCompile(rcpt+`.* tls +no `).MatchString(out) {
				t.Errorf("bounce not listed as a Force TLS fault that did not suppress:\n%s", out)
			}
			if out, code = in.swaks("--to", rcpt, "--h-From", "support@example.com"); code != 0 {
				t.Errorf("next submission to an address bounced for the relay's TLS: exit %d, want accepted\n%s", code, out)
			}
			status, body := adminGet(t, in, "/readyz")
			if status != http.StatusServiceUnavailable || !strings.Contains(body, "tls fault") {
				t.Errorf("/readyz %d, want 503 with the Force TLS alert:\n%s", status, body)
			}
		})
	}
	if sink.Count() > 0 {
		// only the Support channel's message after "bounces remove" may arrive at the sink
		for _, m := range sink.Messages(t) {
			if strings.Contains(m, "secret stuff") {
				t.Fatalf("a Force TLS message was sent in the clear:\n%s", m)
			}
		}
	}
	for _, rec := range node.Accepted(t) {
		if rec["subject"] == "secret stuff" {
			t.Fatalf("a Force TLS message was sent over an unverified TLS connection: %v", rec)
		}
	}
}

// TestTemporaryThenDelivered: an upstream answering 4xx after DATA is retried until it accepts; an
// upstream answering 5xx at RCPT bounces the recipient.
func TestTemporaryThenDelivered(t *testing.T) {
	port := peertest.FreePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	in := newInstance(t, sinkChannels(addr))
	failing := startSinkAt(t, addr, "-r", ".")
	in.start()
	out, code := in.swaks("--to", "later@example.net", "--h-From", "support@example.com", "--h-Subject", "eventually")
	if code != 0 {
		t.Fatalf("submission: %d\n%s", code, out)
	}
	waitFor(t, 15*time.Second, "a deferred attempt", func() bool { return strings.Contains(in.logs(), "deferred") })
	failing.Stop()
	good := startSinkAt(t, addr)
	good.WaitCount(t, 1, 20*time.Second)
	if m := good.Messages(t); len(m) != 1 || !strings.Contains(m[0], "eventually") {
		t.Fatalf("delivered = %q", m)
	}
	good.Stop()

	perm := startSinkAt(t, addr, "-f", "RCPT")
	out, code = in.swaks("--to", "never@example.net", "--h-From", "support@example.com")
	if code != 0 {
		t.Fatalf("submission: %d\n%s", code, out)
	}
	waitFor(t, 15*time.Second, "the permanent bounce", func() bool {
		out, _ := in.mailgate("bounces", "list", "--config", in.config)
		return strings.Contains(out, "never@example.net")
	})
	if perm.Count() != 0 {
		t.Fatalf("the upstream refusing RCPT received a message")
	}
}

// startSinkAt starts smtp-sink (AUTH hidden) at addr with extra options.
func startSinkAt(t *testing.T, addr string, opts ...string) *peertest.Sink {
	t.Helper()
	return peertest.SMTPSinkAt(t, addr, append([]string{"-a"}, opts...)...)
}

// TestCrashSafety: N messages accepted while the upstream is down survive kill -9 and all arrive once
// mailgate restarts with the upstream up.
func TestCrashSafety(t *testing.T) {
	const n = 40
	port := peertest.FreePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	in := newInstance(t, sinkChannels(addr))
	in.start()
	for i := 0; i < n; i++ {
		out := smtpConversation(t, in.smtp, fmt.Sprintf("From: support@example.com\r\nTo: c@example.net\r\nSubject: crash %d\r\n\r\nbody %d\r\n.\r\n", i, i))
		if !strings.Contains(out, "250 2.0.0 queued") {
			t.Fatalf("message %d refused:\n%s", i, out)
		}
	}
	in.kill9()
	sink := startSinkAt(t, addr)
	in.start()
	sink.WaitCount(t, n, 60*time.Second)
	seen := map[string]bool{}
	for _, m := range sink.Messages(t) {
		for i := 0; i < n; i++ {
			if strings.Contains(m, fmt.Sprintf("Subject: crash %d\r\n", i)) || strings.Contains(m, fmt.Sprintf("Subject: crash %d\n", i)) {
				seen[fmt.Sprint(i)] = true
			}
		}
	}
	if len(seen) != n {
		t.Fatalf("after kill -9 and restart, %d of %d distinct messages arrived", len(seen), n)
	}
}

// TestCheckConfigBroken runs the command on a broken file: every problem with its path, exit 1.
func TestCheckConfigBroken(t *testing.T) {
	in := &instance{t: t}
	out, code := in.mailgate("check-config", "../../config/testdata/broken-all.yaml")
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, out)
	}
	for _, want := range []string{"channels[1].transport: unknown server \"m365\"", "listeners[0].tls:", "users[0].role: unknown role", "templates[0].html: unknown variable .Colour", "problem(s)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The example is valid once the files it names under /etc/mailgate exist (as they would on a server).
	exampleFile := installExample(t, "../../examples/mailgate.yaml", peertest.SelfSignedCert(t))
	out, code = in.mailgate("check-config", exampleFile)
	if code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("example config: exit %d\n%s", code, out)
	}
}

// TestAdminEndpoints: /metrics has mailgate's series, /healthz answers.
func TestAdminEndpoints(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	in := newInstance(t, sinkChannels(sink.Addr))
	in.start()
	if _, code := in.swaks("--to", "m@example.net", "--h-From", "support@example.com"); code != 0 {
		t.Fatal("submission failed")
	}
	sink.WaitCount(t, 1, 15*time.Second)
	get := func(path string) string {
		resp, err := http.Get("http://" + in.admin + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	waitFor(t, 10*time.Second, "delivery metrics", func() bool {
		return strings.Contains(get("/metrics"), `mailgate_delivery_attempts_total{result="delivered",transport="up"} 1`)
	})
	m := get("/metrics")
	for _, want := range []string{"mailgate_submission_sessions_total", `mailgate_submission_auth_attempts_total{mechanism="LOGIN",result="success"}`, `mailgate_submission_messages_accepted_total{channel="Support"} 1`, "mailgate_queue_messages"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if h := get("/healthz"); !strings.Contains(h, "ok") {
		t.Errorf("/healthz = %q", h)
	}
}

// installExample writes the example configuration src into a temporary directory standing in for
// /etc/mailgate, with the files it names there (TLS certificate and key, the M365 app certificate and
// key, a client secret, an admin token), and returns the rewritten configuration's path.
func installExample(t *testing.T, src string, cert peertest.Cert) string {
	t.Helper()
	example, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	etc := t.TempDir()
	for name, content := range map[string]string{"tls/cert.pem": readFile(t, cert.CertFile), "tls/key.pem": readFile(t, cert.KeyFile),
		"m365-app.pem": readFile(t, cert.CertFile), "secrets/m365-app.key": readFile(t, cert.KeyFile),
		"secrets/m365-client-secret": "client-secret\n", "admin.token": "0123456789abcdef0123456789abcdef\n"} {
		p := filepath.Join(etc, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(etc, "mailgate.yaml")
	if err := os.WriteFile(file, []byte(strings.ReplaceAll(string(example), "/etc/mailgate/", etc+"/")), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// TestConfigExamples: each focused example in examples/config is a valid configuration once the files it
// names under /etc/mailgate exist (as they would on a server) — check-config passes on every one.
func TestConfigExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/config/*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("examples %v %v", files, err)
	}
	in := newInstance(t, sinkChannels("127.0.0.1:1"))
	cert := peertest.SelfSignedCert(t)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			file := installExample(t, f, cert)
			if out, code := in.mailgate("check-config", file); code != 0 || !strings.Contains(out, ": ok") {
				t.Fatalf("check-config: exit %d\n%s", code, out)
			}
		})
	}
}
