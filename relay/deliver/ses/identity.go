package ses

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sesv2"
	"github.com/aws/aws-sdk-go-v2/service/sesv2/types"

	"github.com/mailgate/mailgate/relay"
)

// Reasons of identity problems (Problem.Reason and relay.Error.Reason).
const (
	ReasonDKIM = "ses_dkim"
)

// identityState is what the last check learnt about a channel's sending identity. hold means SES
// would refuse the channel's mail (identity not verified, or a custom MAIL FROM domain that fails
// with behaviour REJECT_MESSAGE): Deliver defers it as a setup fault instead of sending.
type identityState struct {
	hold   bool
	reason string
	msg    string
	remedy string
}

// identityVerdict is the check of one From address against SES: the identity that covers it (the
// address itself or its domain) and what is wrong with it, if anything.
type identityVerdict struct {
	identity string
	state    identityState
	problems []Problem // hold problems and DKIM/MAIL FROM problems that do not hold mail
	checked  bool      // false: SES could not be asked; nothing is known
}

// checkIdentities asks SES (GetEmailIdentity) about every SES channel's From address: it is sendable
// when the address or its domain is a verified identity. Easy DKIM must not have failed, and a custom
// MAIL FROM domain must be verified, or SES rejects the mail (REJECT_MESSAGE) or falls back to its own
// amazonses.com MAIL FROM (USE_DEFAULT_VALUE, which costs SPF alignment for DMARC). Identities that
// could not be read (SES unreachable, an emulator without the call) are logged and not held: SES
// enforces verification itself, and its refusal defers the mail as a setup fault anyway.
func (t *Transport) checkIdentities(ctx context.Context, now time.Time) []Problem {
	var problems []Problem
	verdicts := map[string]identityVerdict{}
	states := map[string]identityState{}
	for _, name := range sortedChannels(t.channels) {
		ch := t.channels[name]
		if ch.From == "" || ch.IdentityARN != "" {
			continue // another account's identity (sending authorization) is not ours to read
		}
		from := strings.ToLower(ch.From)
		v, ok := verdicts[from]
		if !ok {
			v = t.checkIdentity(ctx, from, now)
			verdicts[from] = v
		}
		if !v.checked {
			continue
		}
		for _, p := range v.problems {
			p.Channel = name
			problems = append(problems, p)
		}
		states[name] = v.state
	}
	t.mu.Lock()
	t.identities = states
	t.mu.Unlock()
	return problems
}

func (t *Transport) checkIdentity(ctx context.Context, from string, now time.Time) identityVerdict {
	_, domain, _ := strings.Cut(from, "@")
	var found []string
	for _, id := range []string{from, domain} {
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		out, err := t.api.GetEmailIdentity(cctx, &sesv2.GetEmailIdentityInput{EmailIdentity: aws.String(id)})
		cancel()
		var nf *types.NotFoundException
		switch {
		case errors.As(err, &nf):
			continue
		case err != nil:
			t.log.Warn("ses identity not checked", "identity", id, "reason", classify(err).Reason, "err", err)
			return identityVerdict{}
		}
		found = append(found, id)
		if out.VerifiedForSendingStatus {
			return t.judgeIdentity(id, out, now)
		}
	}
	msg := fmt.Sprintf("%s is not a verified SES identity for sending, nor is its domain %s", from, domain)
	remedy := "verify the domain " + domain + " in SES (Easy DKIM CNAME records) or the address " + from +
		", in region of this account; until then the channel's mail waits (it is not bounced)"
	if len(found) > 0 {
		msg = fmt.Sprintf("SES identity %s exists but is not verified for sending (pending or failed verification)", strings.Join(found, " and "))
		remedy = "complete the verification of " + found[len(found)-1] + " in SES (check its DNS records); until then the channel's mail waits"
	}
	st := identityState{hold: true, reason: ReasonIdentity, msg: msg, remedy: remedy}
	return identityVerdict{identity: from, checked: true, state: st,
		problems: []Problem{{Reason: ReasonIdentity, Since: now, Msg: msg + "; " + remedy}}}
}

// judgeIdentity looks at a verified identity's DKIM and custom MAIL FROM status.
func (t *Transport) judgeIdentity(id string, out *sesv2.GetEmailIdentityOutput, now time.Time) identityVerdict {
	v := identityVerdict{identity: id, checked: true}
	if d := out.DkimAttributes; d != nil && d.SigningEnabled && (d.Status == types.DkimStatusFailed || d.Status == types.DkimStatusTemporaryFailure) {
		v.problems = append(v.problems, Problem{Reason: ReasonDKIM, Since: now,
			Msg: fmt.Sprintf("DKIM of SES identity %s is %s: mail goes out without mailgate's domain signature and may fail DMARC; "+
				"restore the identity's DKIM CNAME records", id, d.Status)})
	}
	if mf := out.MailFromAttributes; mf != nil && aws.ToString(mf.MailFromDomain) != "" && mf.MailFromDomainStatus != types.MailFromDomainStatusSuccess {
		dom := aws.ToString(mf.MailFromDomain)
		records := "an MX record for " + dom + " pointing at feedback-smtp.<region>.amazonses.com and the SPF TXT record \"v=spf1 include:amazonses.com ~all\""
		if mf.BehaviorOnMxFailure == types.BehaviorOnMxFailureRejectMessage {
			msg := fmt.Sprintf("custom MAIL FROM domain %s of SES identity %s is %s and the identity rejects mail when it fails", dom, id, mf.MailFromDomainStatus)
			remedy := "publish " + records + ", or set the identity's behaviour on MX failure to USE_DEFAULT_VALUE; until then the channel's mail waits"
			v.state = identityState{hold: true, reason: ReasonMailFrom, msg: msg, remedy: remedy}
			v.problems = append(v.problems, Problem{Reason: ReasonMailFrom, Since: now, Msg: msg + "; " + remedy})
		} else {
			t.log.Warn("ses custom MAIL FROM domain not verified; SES uses its own amazonses.com MAIL FROM meanwhile (SPF no longer aligns for DMARC)",
				"identity", id, "mail_from_domain", dom, "status", string(mf.MailFromDomainStatus), "remedy", "publish "+records)
		}
	}
	return v
}

// identityGuard defers a message whose channel's identity SES would refuse, as a setup fault: the
// customer's address is not at fault, and the operator's fix (verifying the identity) lets it go at the
// next check, which a held message asks for.
func (t *Transport) identityGuard(m *relay.Message) error {
	t.mu.Lock()
	st, ok := t.identities[m.Channel]
	t.mu.Unlock()
	if !ok || !st.hold {
		return nil
	}
	select {
	case t.recheck <- struct{}{}:
	default:
	}
	re := setup(relay.Errorf(451, codeIdentity, st.reason, "SES channel %q cannot send yet: %s", m.Channel, st.msg))
	re.Remedy = st.remedy
	return re
}
