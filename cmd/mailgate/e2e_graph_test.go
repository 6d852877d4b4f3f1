package main

import (
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// graphConfig is a channel sending through a Graph mailbox: the fake Graph (its CA in ca_file), tokens
// from the Entra-shaped oauth2-mock-server.
func graphConfig(t *testing.T, fake *peertest.GraphFake, mock *peertest.OAuthMock, clientID, mailbox string) string {
	caFile := filepath.Join(t.TempDir(), "graph-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: fake.Srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return `
graph_servers:
  - name: m365-graph
    endpoint: ` + fake.URL() + `
    ca_file: ` + caFile + `
    oauth:
      tenant_id: contoso.example
      client_id: ` + clientID + `
      client_secret: env:MG_GRAPH_SECRET
      mailbox: ` + mailbox + `
      token_url: ` + mock.URL + `/token
channels:
  - name: Support
    from: support@example.com
    display_name: Example Support
    business_unit: BU
    transport: m365-graph
    outbound_flow: true
    ticket: {style: brackets}
` + supportRoles
}

// TestSwaksToGraph: swaks → mailgate → Microsoft Graph sendMail (fake, TLS, checking the token's
// signature, audience and Mail.Send role against the mock's JWKS); Graph holds the composed MIME, which
// Python's email package reads. `oauth status` shows the Graph credential healthy.
func TestSwaksToGraph(t *testing.T) {
	mock := peertest.EntraMock(t, map[string][]string{"graph-app https://graph.microsoft.com": {"Mail.Send"}})
	fake := peertest.NewGraphFake(t, mock.URL+"/jwks", mock.Issuer)
	in := newInstance(t, graphConfig(t, fake, mock, "graph-app", "box@contoso.example"))
	in.extraEnv = []string{"MG_GRAPH_SECRET=graph-e2e-secret-4f1a"}
	in.start()
	out, code := in.swaks("--to", "customer@example.net", "--h-From", "support@example.com", "--h-Subject", "Parcel status",
		"--add-header", "X-Mailgate-Ticket: 777002", "--body", "Your parcel is on its way.")
	if code != 0 {
		t.Fatalf("swaks: %d\n%s", code, out)
	}
	waitFor(t, 20*time.Second, "Graph to accept the message", func() bool { return len(fake.SentMIME()) == 1 })
	p := filepath.Join(t.TempDir(), "sent.eml")
	if err := os.WriteFile(p, fake.SentMIME()[0], 0o600); err != nil {
		t.Fatal(err)
	}
	got := peertest.Python(t, `import sys, email, email.policy
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)
print(m["Subject"]); print(m["From"]); print(m.get_body(("plain",)).get_content().strip())`, p)
	if got != "Parcel status [#777002]\nExample Support <support@example.com>\nYour parcel is on its way.\n" {
		t.Fatalf("Graph holds:\n%s", got)
	}
	status, _ := in.mailgate("oauth", "status", "--config", in.config)
	if !strings.Contains(status, "m365-graph") || !strings.Contains(status, "true") || !strings.Contains(status, "state of: the running daemon at ") {
		t.Fatalf("oauth status:\n%s", status)
	}
	if strings.Contains(in.logs()+status, "graph-e2e-secret-4f1a") {
		t.Fatal("the client secret appears in mailgate's output")
	}
}

// TestGraphSetupFaultDefersAndAlerts: an app without Mail.Send gets 403 ErrorAccessDenied: the mail is
// deferred (not bounced), and /readyz names the fault and the remedy.
func TestGraphSetupFaultDefersAndAlerts(t *testing.T) {
	mock := peertest.EntraMock(t, map[string][]string{})
	fake := peertest.NewGraphFake(t, mock.URL+"/jwks", mock.Issuer)
	in := newInstance(t, graphConfig(t, fake, mock, "no-role-app", "box@contoso.example"))
	in.extraEnv = []string{"MG_GRAPH_SECRET=graph-e2e-secret-4f1a"}
	in.start()
	if out, code := in.swaks("--to", "customer@example.net", "--h-From", "support@example.com"); code != 0 {
		t.Fatalf("swaks: %d\n%s", code, out)
	}
	var body string
	waitFor(t, 20*time.Second, "/readyz to report the Graph setup fault", func() bool {
		var status int
		status, body = adminGet(t, in, "/readyz")
		return status == http.StatusServiceUnavailable && strings.Contains(body, "Mail.Send")
	})
	if !strings.Contains(body, "admin consent") {
		t.Fatalf("/readyz without the remedy:\n%s", body)
	}
	if out, _ := in.mailgate("bounces", "list", "--config", in.config); strings.Contains(out, "customer@example.net") {
		t.Fatalf("a setup fault bounced the customer:\n%s", out)
	}
	if len(fake.SentMIME()) != 0 {
		t.Fatal("sent without permission")
	}
}

// TestGraphCertificateCredential: the Graph mailbox's app authenticates with a certificate (client
// assertion; the key as a secret reference), mail goes through, and a certificate that expires in 20
// days shows as a /readyz warning (still 200) and in the expiry gauge.
func TestGraphCertificateCredential(t *testing.T) {
	mock := peertest.EntraMock(t, map[string][]string{"graph-app https://graph.microsoft.com": {"Mail.Send"}})
	fake := peertest.NewGraphFake(t, mock.URL+"/jwks", mock.Issuer)
	certFile, keyPEM, notAfter := clientCertificate(t, 20*24*time.Hour)
	cfg := strings.Replace(graphConfig(t, fake, mock, "graph-app", "box@contoso.example"),
		"      client_secret: env:MG_GRAPH_SECRET\n",
		"      client_certificate: "+certFile+"\n      client_key: env:MG_GRAPH_KEY\n", 1)
	in := newInstance(t, cfg)
	in.extraEnv = []string{"MG_GRAPH_KEY=" + keyPEM}
	in.start()
	if out, code := in.swaks("--to", "customer@example.net", "--h-From", "support@example.com"); code != 0 {
		t.Fatalf("swaks: %d\n%s", code, out)
	}
	waitFor(t, 20*time.Second, "Graph to accept the message", func() bool { return len(fake.SentMIME()) == 1 })
	status, body := adminGet(t, in, "/readyz")
	if status != http.StatusOK || !strings.Contains(body, "WARN oauth m365-graph: the client certificate") ||
		!strings.Contains(body, notAfter.UTC().Format("2006-01-02")) {
		t.Fatalf("/readyz %d:\n%s", status, body)
	}
	_, metrics := adminGet(t, in, "/metrics")
	if !strings.Contains(metrics, `mailgate_oauth_credential_expiry_timestamp_seconds{server="m365-graph"} `+strconv.FormatInt(notAfter.Unix(), 10)) &&
		!strings.Contains(metrics, `mailgate_oauth_credential_expiry_timestamp_seconds{server="m365-graph"} `+fmt.Sprintf("%.9e", float64(notAfter.Unix()))) {
		t.Fatalf("expiry gauge missing:\n%s", grepLines(metrics, "credential_expiry"))
	}
	if strings.Contains(in.logs(), "PRIVATE KEY") {
		t.Fatal("the client key appears in mailgate's output")
	}
}

// clientCertificate writes a certificate credential valid for validFor and returns its file, the PEM
// private key and its NotAfter.
func clientCertificate(t *testing.T, validFor time.Duration) (string, string, time.Time) {
	c := peertest.NewClientCertificate(t, validFor)
	certFile := filepath.Join(t.TempDir(), "app.pem")
	if err := os.WriteFile(certFile, c.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, string(c.KeyPEM), c.NotAfter
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestTestSendJudgesGraphToken: test-send prints a verdict per line — audience, permission, mailbox —
// and sends only when none needs fixing: an app without Mail.Send is told what to grant and nothing is
// sent; the right app is OK on every line and its message is accepted by Graph.
func TestTestSendJudgesGraphToken(t *testing.T) {
	mock := peertest.EntraMock(t, map[string][]string{"graph-app https://graph.microsoft.com": {"Mail.Send"},
		"wrong-app https://graph.microsoft.com": {"User.Read.All"}})
	fake := peertest.NewGraphFake(t, mock.URL+"/jwks", mock.Issuer)
	for _, c := range []struct {
		client string
		ok     bool
		want   []string
	}{
		{"wrong-app", false, []string{"OK   audience: https://graph.microsoft.com", "FIX  permission: roles User.Read.All lack Mail.Send", "not sent: fix permission"}},
		{"graph-app", true, []string{"OK   audience: https://graph.microsoft.com", "OK   permission: application permission Mail.Send", "OK   mailbox", "accepted in"}},
	} {
		in := newInstance(t, graphConfig(t, fake, mock, c.client, "box@contoso.example"))
		in.extraEnv = []string{"MG_GRAPH_SECRET=graph-e2e-secret-4f1a"}
		before := len(fake.SentMIME())
		out, code := in.mailgate("test-send", "--config", in.config, "--channel", "Support", "--to", "probe@example.net")
		if (code == 0) != c.ok {
			t.Fatalf("%s: test-send exit %d\n%s", c.client, code, out)
		}
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Fatalf("%s: want %q in:\n%s", c.client, w, out)
			}
		}
		if sent := len(fake.SentMIME()) - before; (sent == 1) != c.ok {
			t.Fatalf("%s: %d messages reached Graph", c.client, sent)
		}
	}
}
