package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/relay/peertest"
)

// runIn runs the mailgate binary in dir and returns stdout, stderr and the exit code.
func runIn(t *testing.T, dir string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := exitCode(t, cmd.Run())
	return stdout.String(), stderr.String(), code
}

// previewParser prints what Python's email package sees in the composed message argv[1], and checks
// that the HTML part equals the --html-out file argv[2] (line endings aside).
const previewParser = `
import sys, email, email.policy, datetime, zoneinfo
m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=email.policy.default)
print("FROMNAME=" + m["from"].addresses[0].display_name)
print("FROMADDR=" + m["from"].addresses[0].addr_spec)
print("SUBJECT=" + str(m["subject"]))
print("CTYPE=" + m.get_content_type())
print("PARTS=" + ",".join(p.get_content_type() for p in m.iter_parts()))
print("MSGID=" + str(m["message-id"]))
d = m["date"].datetime
ny = d.astimezone(zoneinfo.ZoneInfo("America/New_York"))
print("DATE_IN_BU_ZONE=" + str(d.utcoffset() == ny.utcoffset()))
text = m.get_body(preferencelist=("plain",))
text = text.get_content() if text else "NONE"
html = m.get_body(preferencelist=("html",)).get_content()
print("TEXT=" + text.replace("\r\n", "\n").replace("\n", "|"))
print("HTML=" + html.replace("\r\n", "\n").replace("\n", " "))
out = open(sys.argv[2], encoding="utf-8").read()
print("HTML_OUT_EQUAL=" + str(out.replace("\r\n", "\n").strip() == html.replace("\r\n", "\n").strip()))
`

// TestPreviewDevelopmentDefault: `mailgate preview` with no --config composes with the development
// default — From display name, bracketed ticket at the end of the subject, the branded template and
// demo's signature before the quoted history, multipart/alternative for a text body — as Python's email
// parser reads it; --html-out holds exactly the HTML part; nothing is written besides that file.
func TestPreviewDevelopmentDefault(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"text body", "Hello,\nyour order 42 has shipped.\n\n-----Original Message-----\nFrom: customer\nwhere is my order?\n", []string{
			"CTYPE=multipart/alternative\n", "PARTS=text/plain,text/html\n",
			// demo's plain signature before the quoted history.
			"TEXT=Hello,|your order 42 has shipped.||Demo Agent|Example Support | support@example.com||-----Original Message-----",
		}},
		{"html body", `<p>Hello,</p><p>your order 42 has shipped.</p><blockquote type="cite">where is my order?</blockquote>`, []string{
			// An HTML body gets a text alternative read from it, the plain signature before the quote.
			"CTYPE=multipart/alternative\n", "PARTS=text/plain,text/html\n",
			"TEXT=Hello,||your order 42 has shipped.||Demo Agent|Example Support | support@example.com||> where is my order?",
			`<blockquote type="cite">where is my order?</blockquote>`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bodyFile := filepath.Join(dir, "body")
			if err := os.WriteFile(bodyFile, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			htmlOut := filepath.Join(dir, "out.html")
			stdout, stderr, code := runIn(t, dir, "preview", "--raw", "--channel", "Support", "--user", "demo", "--subject", "Order status",
				"--ticket", "123", "--body", bodyFile, "--html-out", htmlOut)
			if code != 0 {
				t.Fatalf("preview: exit %d\n%s%s", code, stdout, stderr)
			}
			if !strings.Contains(stderr, "HTML part written to "+htmlOut) {
				t.Errorf("stderr = %q", stderr)
			}
			composed := filepath.Join(t.TempDir(), "m.eml")
			if err := os.WriteFile(composed, []byte(stdout), 0o600); err != nil {
				t.Fatal(err)
			}
			got := peertest.Python(t, previewParser, composed, htmlOut)
			for _, want := range append([]string{
				"FROMNAME=Example Support\n", "FROMADDR=support@example.com\n",
				"SUBJECT=Order status [#123]\n",
				"DATE_IN_BU_ZONE=True\n",
				"HTML_OUT_EQUAL=True\n",
				// The template (its banner colour and ticket footer) around the agent's content.
				"background:#1f4e79", ">Example Support</td>", "Ticket 123 &middot;", "your order 42 has shipped.",
				// demo's HTML signature.
				"<strong>Example Support</strong>",
			}, tc.want...) {
				if !strings.Contains(got, want) {
					t.Errorf("composed message lacks %q:\n%s", want, got)
				}
			}
			if !strings.Contains(got, "MSGID=<") || !strings.Contains(got, "123") || !strings.Contains(got, "@example.com>") {
				t.Errorf("Message-ID is not in the channel's domain carrying the ticket:\n%s", got)
			}
			// The signature goes before the quoted history, in the HTML part too.
			html := got[strings.Index(got, "HTML="):]
			sig, quote := strings.Index(html, "Demo Agent"), strings.Index(html, "where is my order?")
			if sig < 0 || quote < 0 || sig > quote {
				t.Errorf("HTML signature at %d, quoted history at %d: the signature belongs before the history:\n%s", sig, quote, html)
			}
			// Preview only reads: no development data directory appears.
			entries, _ := os.ReadDir(dir)
			if len(entries) != 2 {
				var names []string
				for _, e := range entries {
					names = append(names, e.Name())
				}
				t.Errorf("preview left %v in its working directory; want only body and out.html", names)
			}
		})
	}
	stdout, stderr, code := runIn(t, t.TempDir(), "preview", "--channel", "Sales")
	if code != 1 || !strings.Contains(stderr, `no channel "Sales"; the configuration has "Support"`) {
		t.Errorf("preview of an unknown channel: exit %d\n%s%s", code, stdout, stderr)
	}
	stdout, stderr, code = runIn(t, t.TempDir(), "preview", "--channel", "support")
	if code != 1 || !strings.Contains(stderr, `did you mean "Support"?`) {
		t.Errorf("preview of a channel in the wrong case: exit %d\n%s%s", code, stdout, stderr)
	}
}

// TestPreviewReadable: without --raw, preview prints the message for a person: the header fields with
// encoded words decoded, each part's text decoded from quoted-printable under a line naming its type.
func TestPreviewReadable(t *testing.T) {
	stdout, stderr, code := runIn(t, t.TempDir(), "preview", "--channel", "Support", "--user", "demo",
		"--subject", "Grüße zur Bestellung", "--ticket", "77")
	if code != 0 {
		t.Fatalf("preview: exit %d\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{
		"\nSubject: Grüße zur Bestellung [#77]\n", "\n--- text/plain ---\nHello,\n", "\n--- text/html ---\n<!DOCTYPE html>",
		`<table role="presentation" width="600"`, "Demo Agent\nExample Support | support@example.com",
	} {
		if !strings.Contains(stdout, want) {
			t.Errorf("readable preview lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "=3D") || strings.Contains(stdout, "=?utf-8?") || strings.Contains(stdout, "quoted-printable") {
		t.Errorf("readable preview is still encoded:\n%s", stdout)
	}
}

// TestPreviewWithoutTicket: a new outbound message has no ticket, and the built-in template shows no
// empty "Ticket ·" line for it, in HTML or text.
func TestPreviewWithoutTicket(t *testing.T) {
	dir := t.TempDir()
	stdout, stderr, code := runIn(t, dir, "preview", "--raw", "--channel", "Support", "--user", "demo", "--subject", "Hello")
	if code != 0 {
		t.Fatalf("preview: exit %d\n%s%s", code, stdout, stderr)
	}
	composed := filepath.Join(dir, "m.eml")
	if err := os.WriteFile(composed, []byte(stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	got := peertest.Python(t, `
import sys, email, email.policy
m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=email.policy.default)
for p in m.walk():
    if p.get_content_maintype() == "text":
        print(p.get_content())
`, composed)
	if strings.Contains(strings.ToLower(got), "ticket") {
		t.Fatalf("a message without a ticket mentions one:\n%s", got)
	}
}
