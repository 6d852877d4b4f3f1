package submit

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/mailgate/mailgate/auth"
)

// A service principal whose role has act_for_agents on the channel names the agent in X-Mailgate-Agent:
// the agent reaches composition (its signature and name) and the envelope (the delivery log records
// both). Without the permission, for an unknown agent, or for an agent who may not reply on the channel,
// the message is refused 550 5.7.1.
func TestServicePrincipalActsForAgent(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	composer := composerFunc(func(ctx context.Context, src io.Reader, dst io.Writer, sub *Submission) (*Composed, error) {
		mu.Lock()
		seen = append(seen, agentLogin(sub.Agent))
		mu.Unlock()
		return passThrough{}.Compose(ctx, src, dst, sub)
	})
	h := startServer(t, nil, composer)
	dir, err := auth.NewDirectory(
		[]auth.User{
			{Login: "Alice", Name: "Alice Agent", PasswordHash: hashPW(t, "alice"), Role: "agent"},
			{Login: "biller", Name: "Billing Only", PasswordHash: hashPW(t, "biller"), Role: "billing"},
		},
		[]auth.Role{
			{Name: "agent", Channels: map[string]auth.Permission{"Support": {Reply: true, Outbound: true}}},
			{Name: "billing", Channels: map[string]auth.Permission{"Billing": {Reply: true}}},
			{Name: "crm", Channels: map[string]auth.Permission{"Support": {Reply: true, Outbound: true, ActForAgents: true}, "Billing": {Reply: true, Outbound: true}}},
		},
		[]auth.TrustedNetwork{{Prefix: loopback, Principal: "crm", Role: "crm"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	rules, err := NewRules(dir, testChannels, composer)
	if err != nil {
		t.Fatal(err)
	}
	h.srv.SetRules(rules)

	out, code := h.swaks(t, "submission", "--from", "support@example.com", "--header", "X-Mailgate-Agent: alice")
	if code != 0 {
		t.Fatalf("crm for alice: exit %d\n%s", code, out)
	}
	msgs := h.spool.Messages()
	if len(msgs) != 1 || msgs[0].Env.Principal != "crm" || msgs[0].Env.Agent != "alice" {
		t.Fatalf("envelope %+v", msgs)
	}
	if out, code := h.swaks(t, "submission", "--from", "support@example.com"); code != 0 {
		t.Fatalf("crm as itself: exit %d\n%s", code, out)
	}
	if seen := strings.Join(seen, ","); seen != "alice," {
		t.Fatalf("composer saw agents %q", seen)
	}
	for _, c := range []struct{ name, from, agent, auth string }{
		{"unknown agent", "support@example.com", "nobody", ""},
		{"agent without reply on the channel", "support@example.com", "biller", ""},
		{"no act_for_agents on this channel", "billing@example.com", "biller", ""},
		// alice herself lacks act_for_agents (were AUTH skipped, crm's naming of alice would pass).
		{"an agent may not act for agents", "support@example.com", "alice", "alice"},
	} {
		args := []string{"--from", c.from, "--header", "X-Mailgate-Agent: " + c.agent, "--header", "In-Reply-To: <a@example.net>"}
		if c.auth != "" {
			args = append(args, "--tls", "--auth", "PLAIN", "--auth-user", c.auth, "--auth-password", c.auth)
		}
		out, code := h.swaks(t, "submission", args...)
		if code == 0 || !strings.Contains(out, "550 5.7.1") {
			t.Fatalf("%s: exit %d\n%s", c.name, code, out)
		}
	}
	if n := len(h.spool.Messages()); n != 2 {
		t.Fatalf("%d messages queued, want 2", n)
	}
}
