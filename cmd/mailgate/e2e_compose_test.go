package main

import (
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// composeChannels: one channel with a branded template, brackets-at-start tickets, a signature for
// alice, a business unit accepting only .png and .pdf, and an upstream limit of 200 KB.
func composeChannels(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return `
smtp_servers:
  - name: up
    host: ` + host + `
    port: ` + port + `
    max_message_bytes: 200000
templates:
  - name: brand
    html: "<html><body><div class=brand>{{.DisplayName}}</div>{{.Content}}<p>Ticket {{.Ticket}}</p></body></html>"
signatures:
  - name: alice-sig
    text: "Alice Agent\nExample Support"
    users: [alice]
channels:
  - name: Support
    from: support@example.com
    display_name: "Example Support, Inc."
    business_unit: BU2
    transport: up
    outbound_flow: true
    template: brand
    ticket: {position: start, style: brackets}
` + supportRoles
}

// TestComposedMessageUpstream: swaks with X-Mailgate-Ticket → mailgate → smtp-sink shows the composed
// message, checked by Python's email parser; a refused extension and an oversize message are refused
// at DATA with their codes and nothing is queued.
func TestComposedMessageUpstream(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	in := newInstance(t, composeChannels(sink.Addr))
	in.start()
	out, code := in.swaks("--to", "customer@example.net", "--h-From", "support@example.com",
		"--h-Subject", "Re: Your parcel", "--add-header", "X-Mailgate-Ticket: 123456",
		"--add-header", "In-Reply-To: <q1@customer.example>", "--body", "Hello,\nit ships today.")
	if code != 0 {
		t.Fatalf("swaks: %d\n%s", code, out)
	}
	sink.WaitCount(t, 1, 15*time.Second)
	msg := sink.Messages(t)[0]
	// Drop smtp-sink's own envelope headers before parsing.
	if i := strings.Index(msg, "\nReceived:"); i >= 0 {
		msg = msg[strings.Index(msg[i+1:], "\n")+i+2:]
	}
	for strings.HasPrefix(msg, "\t") || strings.HasPrefix(msg, " ") {
		msg = msg[strings.Index(msg, "\n")+1:]
	}
	f := filepath.Join(t.TempDir(), "m.eml")
	if err := os.WriteFile(f, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	got := peertest.Python(t, `
import sys, email, email.policy
m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=email.policy.default)
print("SUBJECT=" + str(m["subject"]))
print("FROM=" + str(m["from"]))
print("FROMNAME=" + m["from"].addresses[0].display_name)
print("MSGID=" + str(m["message-id"]))
print("INREPLYTO=" + str(m["in-reply-to"]))
print("DATE=" + str(m["date"]))
print("XMG=" + str([k for k in m.keys() if k.lower().startswith("x-mailgate")]))
html = m.get_body(preferencelist=("html",))
text = m.get_body(preferencelist=("plain",))
print("HTML=" + (html.get_content().replace("\n", " ") if html else "NONE"))
print("TEXT=" + (text.get_content().replace("\n", " ") if text else "NONE"))
`, f)
	for _, want := range []string{
		"SUBJECT=Re: [#123456] Your parcel", "FROMNAME=Example Support, Inc.", "FROM=\"Example Support, Inc.\" <support@example.com>",
		"INREPLYTO=<q1@customer.example>", "+0900", "XMG=[]", "class=brand", "Example Support, Inc.</div>", "Ticket 123456",
		"Alice Agent", "it ships today",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("composed message lacks %q:\n%s", want, got)
		}
	}
	if !strings.Contains(got, "123456") || !strings.Contains(got, "@example.com>") {
		t.Errorf("Message-ID not in the channel's domain with the ticket:\n%s", got)
	}

	// A refused extension: 550 5.7.1 at DATA, naming it.
	exe := base64.StdEncoding.EncodeToString([]byte("MZ not really a program"))
	body := "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"tool.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + exe + "\r\n--b1--\r\n"
	bodyFile := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(bodyFile, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = in.swaks("--to", "customer@example.net", "--h-From", "support@example.com", "--add-header", "MIME-Version: 1.0",
		"--add-header", "Content-Type: multipart/mixed; boundary=b1", "--body", "@"+bodyFile)
	if code == 0 || !strings.Contains(out, "550 5.7.1") || !strings.Contains(out, ".exe") {
		t.Errorf("attachment .exe: exit %d, want 550 5.7.1 naming .exe\n%s", code, out)
	}
	// Too big for the upstream's 200 KB after composition: 552 5.3.4 at DATA.
	if err := os.WriteFile(bodyFile, []byte(strings.Repeat("0123456789abcdef\n", 13000)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code = in.swaks("--to", "customer@example.net", "--h-From", "support@example.com", "--body", "@"+bodyFile)
	if code == 0 || !strings.Contains(out, "552 5.3.4") {
		t.Errorf("oversize: exit %d, want 552 5.3.4\n%s", code, out)
	}
	time.Sleep(500 * time.Millisecond)
	if n := sink.Count(); n != 1 {
		t.Errorf("sink received %d messages, want only the first", n)
	}
}

// TestUpstreamAdvertisedSize: once mailgate has seen the upstream's SIZE (RFC 1870), a composed
// message over it is refused at DATA with 552 5.3.4 instead of being accepted and bounced later.
func TestUpstreamAdvertisedSize(t *testing.T) {
	node := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{MaxSize: 30000})
	host, port, _ := net.SplitHostPort(node.Addr)
	in := newInstance(t, `
smtp_servers:
  - name: up
    host: `+host+`
    port: `+port+`
    auth: login
    username: user
    password: env:MG_UP_PASSWORD
    ca_file: `+node.Cert.CertFile+`
channels:
  - name: Support
    from: support@example.com
    business_unit: BU
    transport: up
    outbound_flow: true
`+supportRoles)
	in.extraEnv = []string{"MG_UP_PASSWORD=pass"}
	in.start()
	if out, code := in.swaks("--to", "customer@example.net", "--h-From", "support@example.com", "--body", "small"); code != 0 {
		t.Fatalf("small message: %d\n%s", code, out)
	}
	waitFor(t, 15*time.Second, "the first delivery (mailgate learns SIZE)", func() bool { return len(node.Accepted(t)) == 1 })
	bodyFile := filepath.Join(t.TempDir(), "body")
	if err := os.WriteFile(bodyFile, []byte(strings.Repeat("0123456789abcdef\n", 3000)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := in.swaks("--to", "customer@example.net", "--h-From", "support@example.com", "--body", "@"+bodyFile)
	if code == 0 || !strings.Contains(out, "552 5.3.4") || !strings.Contains(out, "30000") {
		t.Fatalf("oversize for the upstream's SIZE: exit %d, want 552 5.3.4 naming the limit\n%s", code, out)
	}
	out, _ = in.mailgate("bounces", "list", "--config", in.config)
	if strings.Contains(out, "customer@example.net") {
		t.Fatalf("refused at DATA, yet bounced:\n%s", out)
	}
}
