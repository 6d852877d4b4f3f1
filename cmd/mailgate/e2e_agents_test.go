package main

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// TestServiceAccountActsForAgent: a CRM on a trusted network (role with act_for_agents) names alice in
// X-Mailgate-Agent: the customer receives alice's signature and no X-Mailgate header, and `log search`
// records the CRM as principal and alice as agent. bob, an agent without the permission, is refused
// 550 5.7.1 when he names alice.
func TestServiceAccountActsForAgent(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	host, port, _ := net.SplitHostPort(sink.Addr)
	in := newInstance(t, `
smtp_servers:
  - name: up
    host: `+host+`
    port: `+port+`
signatures:
  - name: alice-sig
    text: "Alice Agent -- Example Support"
    users: [alice]
trusted_networks:
  - cidr: 127.0.0.0/8
    principal: crm-app
    role: crm
    business_unit: BU
channels:
  - name: Support
    from: support@example.com
    display_name: Example Support
    business_unit: BU
    transport: up
    outbound_flow: true
`+supportRoles+`  - name: crm
    channels:
      Support: [reply, outbound, act_for_agents]
`)
	in.start()
	h, p, _ := net.SplitHostPort(in.smtp)
	out, code := peertest.Swaks(t, "--server", h, "--port", p, "--tls", "--tls-verify", "--tls-ca-path", in.cert.CertFile,
		"--to", "customer@example.net", "--h-From", "support@example.com", "--h-Subject", "Your order",
		"--add-header", "X-Mailgate-Agent: alice", "--add-header", "X-Mailgate-Ticket: 424242", "--body", "It ships today.")
	if code != 0 {
		t.Fatalf("crm for alice: %d\n%s", code, out)
	}
	sink.WaitCount(t, 1, 15*time.Second)
	msg := sink.Messages(t)[0]
	if !strings.Contains(msg, "Alice Agent -- Example Support") || strings.Contains(strings.ToLower(msg), "x-mailgate") {
		t.Fatalf("delivered message:\n%s", msg)
	}
	var log string
	waitFor(t, 10*time.Second, "the delivery log to name principal and agent", func() bool {
		log, _ = in.mailgate("log", "search", "--config", in.config, "title=424242")
		return strings.Contains(log, "crm-app") && strings.Contains(log, "alice") && strings.Contains(log, "delivered")
	})
	if !strings.Contains(log, "AGENT") {
		t.Fatalf("log search:\n%s", log)
	}
	// bob (reply only, no act_for_agents) may not name an agent.
	out, code = in.swaksAs("bob", "--to", "customer@example.net", "--h-From", "support@example.com",
		"--add-header", "X-Mailgate-Agent: alice", "--add-header", "In-Reply-To: <x@customer.example>")
	if code == 0 || !strings.Contains(out, "550 5.7.1") {
		t.Fatalf("bob naming alice: %d\n%s", code, out)
	}
}
