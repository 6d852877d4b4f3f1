package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mailgate/mailgate/config"
	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/compose"
	"github.com/mailgate/mailgate/relay/deliver/graph"
	"github.com/mailgate/mailgate/relay/deliver/ses"
	"github.com/mailgate/mailgate/relay/submit"
	"github.com/mailgate/mailgate/signatures"
	"github.com/mailgate/mailgate/templates"
)

// composition is everything composition needs from a configuration: the compose channel per channel
// name and the signature per agent login. It implements submit.Composer.
type composition struct {
	composer   *compose.Composer
	channels   map[string]*compose.Channel
	signatures map[string]*signatures.Signature // by lower-cased login
	// advertised gives, per channel name, the size limit its upstream last advertised (RFC 1870
	// SIZE; 0 = unknown). The configured limits are in channels; this one is learnt at run time.
	advertised map[string]func() int64
}

// Compose adapts submission's view of a message to the composer's.
func (c *composition) Compose(ctx context.Context, src io.Reader, dst io.Writer, sub *submit.Submission) (*submit.Composed, error) {
	ch, ok := c.channels[sub.Channel.Name]
	if !ok {
		return nil, fmt.Errorf("composition: no channel %q", sub.Channel.Name)
	}
	who := sub.Principal
	if sub.Agent != nil {
		who = sub.Agent // a service account sending for an agent: the agent's name and signature
	}
	agent := compose.Agent{Login: who.Login, Name: who.Name, Signature: c.signatures[strings.ToLower(who.Login)]}
	res, err := c.composer.Compose(ctx, src, dst, compose.Request{Channel: ch, Agent: agent, Now: sub.Received, InputSize: sub.RawSize})
	if err != nil {
		return nil, err
	}
	if size := c.advertised[ch.Name]; size != nil {
		if limit := size(); limit > 0 && res.Size > limit {
			return nil, relay.Errorf(552, relay.CodeTooBig, "size",
				"Message too big: %d bytes once composed; the channel's mail server takes at most %d", res.Size, limit)
		}
	}
	return &submit.Composed{MessageID: res.MessageID, Ticket: res.Ticket, Reply: res.Reply, Size: res.Size}, nil
}

// transportLimit is the largest composed message a channel's transport takes, checked at DATA so that
// an oversize message is refused to the agent instead of bouncing later: SES's 40 MB on the final MIME,
// a custom server's configured limit. 0 = no limit known in advance.
func transportLimit(c *config.Config, transport string) int64 {
	switch transport {
	case config.TransportSES:
		return ses.MaxMessageBytes
	case config.TransportOutbox:
		return 0
	}
	for _, s := range c.SMTPServers {
		if s.Name == transport {
			return s.MaxMessageBytes
		}
	}
	for _, g := range c.GraphServers {
		if g.Name == transport {
			if g.MaxMessageBytes > 0 {
				return g.MaxMessageBytes
			}
			return graph.DefaultMaxMessageBytes
		}
	}
	return 0
}

// buildComposition turns templates, signatures, business units and channels into composition. budget
// is the process's composition memory (shared across reloads); nil gives the composer its own.
func buildComposition(c *config.Config, budget *compose.Budget) (*composition, error) {
	tmpls := map[string]*templates.Template{}
	for _, t := range c.Templates {
		pt, err := templates.Parse(t.Name, t.HTML, t.Text)
		if err != nil {
			return nil, fmt.Errorf("templates %s: %w", t.Name, err)
		}
		tmpls[t.Name] = pt
	}
	defs := make([]signatures.Definition, 0, len(c.Signatures))
	for _, s := range c.Signatures {
		defs = append(defs, signatures.Definition{Name: s.Name, Text: s.Text, HTML: s.HTML, Users: s.Users})
	}
	sigs, errs := signatures.Assign(defs)
	if len(errs) > 0 {
		return nil, fmt.Errorf("signatures: %v", errs)
	}
	lower := make(map[string]*signatures.Signature, len(sigs))
	for login, s := range sigs {
		lower[strings.ToLower(login)] = s
	}
	bus := map[string]config.BusinessUnit{}
	for _, b := range c.BusinessUnits {
		bus[b.Name] = b
	}
	comp := &composition{composer: compose.New(compose.Options{Budget: budget}), channels: map[string]*compose.Channel{}, signatures: lower,
		advertised: map[string]func() int64{}}
	for _, ch := range c.Channels {
		bu := bus[ch.BusinessUnit]
		loc, err := time.LoadLocation(bu.TimeZone)
		if err != nil {
			return nil, fmt.Errorf("business unit %s: %w", bu.Name, err)
		}
		cc := &compose.Channel{
			Name: ch.Name, FromAddress: ch.From, DisplayName: ch.DisplayName,
			Template:          tmpls[ch.Template],
			Ticket:            compose.TicketFormat{Position: compose.Position(ch.Ticket.Position), Style: compose.Style(ch.Ticket.Style)},
			Threading:         compose.Threading(ch.Threading),
			Location:          loc,
			AllowedExtensions: bu.AcceptedExtensions,
			MaxMessageBytes:   transportLimit(c, ch.Transport),
		}
		if errs := cc.Validate(); len(errs) > 0 {
			return nil, fmt.Errorf("channel %s: %v", ch.Name, errs)
		}
		comp.channels[ch.Name] = cc
	}
	return comp, nil
}

// buildRules is submission's view of a configuration: who may send, on which channel, composed how.
func buildRules(c *config.Config, comp *composition) (*submit.Rules, error) {
	dir, err := buildDirectory(c)
	if err != nil {
		return nil, err
	}
	chans := make([]submit.Channel, 0, len(c.Channels))
	for _, ch := range c.Channels {
		chans = append(chans, submit.Channel{
			Name: ch.Name, FromAddress: ch.From, OutboundActive: ch.OutboundFlow, Transport: ch.Transport,
			ForceTLS: ch.ForceTLS, MailFrom: ch.MailFrom, MaxMessageBytes: transportLimit(c, ch.Transport),
		})
	}
	return submit.NewRules(dir, chans, comp)
}
