package submit

import (
	"strings"

	"github.com/emersion/go-message/textproto"

	"github.com/mailgate/mailgate/auth"
	"github.com/mailgate/mailgate/relay"
)

// AgentHeader names the agent a service principal (a CRM, an application on a trusted network) sends
// for (DESIGN §1). Composition removes it with every X-Mailgate-* header before the message leaves.
const AgentHeader = "X-Mailgate-Agent"

// actingAgent returns the agent named in the header, or nil when there is none. Naming one needs the
// principal's act_for_agents permission on the channel, and the agent must be a user who may reply on
// it: a service account cannot lend a message a signature its agent could not send with. Every refusal
// is 550 5.7.1 (RFC 3463: delivery not authorized), the same for an unknown and a forbidden agent, so
// logins cannot be probed.
func actingAgent(h textproto.Header, rules *Rules, p *auth.Principal, ch *Channel) (*auth.Principal, error) {
	values := h.Values(AgentHeader)
	if len(values) == 0 {
		return nil, nil
	}
	if !p.May(ch.Name).ActForAgents {
		return nil, relay.Errorf(550, relay.CodePolicy, "agent_not_permitted",
			"You may not send on behalf of agents (%s) on this channel", AgentHeader)
	}
	login := strings.TrimSpace(values[0])
	if len(values) > 1 || login == "" {
		return nil, relay.Errorf(550, relay.CodePolicy, "agent_invalid", "Name exactly one agent in %s", AgentHeader)
	}
	agent, ok := rules.directory.Agent(login)
	if !ok || !agent.May(ch.Name).Reply {
		return nil, relay.Errorf(550, relay.CodePolicy, "agent_not_permitted",
			"Agent %q may not send from this channel", login[:min(len(login), 64)]) // the reply boundary sanitizes it
	}
	return agent, nil
}

func agentLogin(a *auth.Principal) string {
	if a == nil {
		return ""
	}
	return a.Login
}
