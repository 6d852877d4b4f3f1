package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

const clientSecret = "mailgate-e2e-client-secret-3f9a"

// TestXOAUTH2ToNodeSMTPServer: 1000 messages relayed to Node's smtp-server, which verifies each
// XOAUTH2 token against oauth2-mock-server's JWKS, cost exactly one token request; test-send reports
// the token and the server before sending; no secret or token appears in any output. (Outages and
// revoked tokens are auth/oauth's and relay/deliver/smtp's tests, against the same peers.)
func TestXOAUTH2ToNodeSMTPServer(t *testing.T) {
	peers := startOAuthPeers(t, false)
	proxy, node := peers.proxy, peers.node
	// Exchange's shaping (30 messages a minute) would make 1000 messages take half an hour.
	in := newInstance(t, peers.server("    messages_per_minute: 1000000\n    recipients_per_day: 1000000\n", "")+relayChannels("m365"))
	in.extraEnv = []string{"MG_E2E_CLIENT_SECRET=" + clientSecret}
	in.start()

	const n = 1000
	for i := 0; i < n; i++ {
		out := smtpConversation(t, in.smtp, fmt.Sprintf("From: support@example.com\r\nTo: c%d@example.net\r\nSubject: oauth %d\r\n\r\nbody\r\n.\r\n", i, i))
		if !strings.Contains(out, "250 2.0.0 queued") {
			t.Fatalf("message %d refused:\n%s", i, out)
		}
	}
	waitFor(t, 120*time.Second, fmt.Sprintf("%d messages at the XOAUTH2 upstream", n), func() bool { return len(node.Accepted(t)) >= n })
	for _, rec := range node.Accepted(t)[:3] {
		if rec["auth"] != "XOAUTH2" || rec["user"] != "sender@contoso.example" || rec["tls"] != true {
			t.Fatalf("upstream session: %v", rec)
		}
	}
	if got, _ := proxy.counts(); got != 1 {
		t.Fatalf("%d messages cost %d token requests, want exactly 1", n, got)
	}

	// test-send reports what it found before sending.
	out, code := in.mailgate("test-send", "--config", in.config, "--channel", "Support", "--to", "probe@example.net")
	if code != 0 || !strings.Contains(out, "XOAUTH2") || !strings.Contains(strings.ToLower(out), "expires") {
		t.Errorf("test-send: exit %d\n%s", code, out)
	}

	// Every output of the run: no client secret, no token.
	all := in.logs() + out
	for _, rec := range node.Accepted(t) {
		all += fmt.Sprint(rec)
	}
	metrics, _ := http.Get("http://" + in.admin + "/metrics")
	if metrics != nil {
		b, _ := io.ReadAll(metrics.Body)
		metrics.Body.Close()
		all += string(b)
	}
	tokens, _, _ := proxy.seen()
	secrets := append([]string{clientSecret}, tokens...)
	for _, s := range secrets {
		if strings.Contains(all, s) {
			t.Fatalf("a secret or token appears in mailgate's output")
		}
		if len(s) > 40 && strings.Contains(all, s[len(s)-40:]) {
			t.Fatalf("part of a token appears in mailgate's output")
		}
	}
}
