package submit

import (
	"slices"
	"strings"

	"github.com/emersion/go-message/textproto"

	"github.com/mailgate/mailgate/auth"
	"github.com/mailgate/mailgate/relay"
)

// checkReplyTo lets a Reply-To through only when every address in it is in the domain of a channel
// the principal may reply on. Customers answer to Reply-To: an agent pointing it anywhere else would
// take the conversation out of the contact center (or hand it to a phisher) under the channel's
// name. Plus-addresses and other local parts of the channel's domain stay possible
// (support+4711@example.com for ticket routing). The domain must match exactly; a subdomain is another
// domain. Refused with 550 5.7.1, the reason named; an unparsable Reply-To with 554 5.6.0.
func checkReplyTo(h textproto.Header, r *Rules, p *auth.Principal) error {
	values := h.Values("Reply-To")
	if len(values) == 0 {
		return nil
	}
	if len(values) > 1 {
		return relay.Errorf(554, relay.CodeMalformed, "malformed", "Message must have at most one Reply-To header field")
	}
	list, err := addressParser.ParseList(values[0])
	if err != nil {
		return relay.Errorf(554, relay.CodeMalformed, "malformed", "Reply-To header is malformed")
	}
	var domains []string
	for _, ch := range r.channels {
		if p.May(ch.Name).Reply {
			domains = append(domains, domainOf(ch.FromAddress))
		}
	}
	for _, a := range list {
		if !slices.Contains(domains, domainOf(a.Address)) {
			slices.Sort(domains)
			return relay.Errorf(550, relay.CodePolicy, "reply_to_not_permitted",
				"Reply-To %s is not allowed: it may only name addresses in your channels' domains (%s)",
				quote(a.Address), strings.Join(slices.Compact(domains), ", "))
		}
	}
	return nil
}

// domainOf is the lower-cased domain of an address (after its last "@").
func domainOf(addr string) string {
	return strings.ToLower(addr[strings.LastIndexByte(addr, '@')+1:])
}
