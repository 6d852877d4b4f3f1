package ses

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sesv2"
	"github.com/aws/aws-sdk-go-v2/service/sesv2/types"

	"github.com/mailgate/mailgate/relay"
)

// Problem is something about the SES account or a channel's configuration set that an operator must
// fix. The lead reports Problems in /readyz and in the log; mail keeps queueing meanwhile.
type Problem struct {
	Channel string // "" for the account as a whole
	Reason  string // short fixed word: tls_policy, ses_account_suspended, upstream_auth, ...
	Msg     string // what is wrong and what to do, safe to show
	Since   time.Time
}

// String renders the problem for /readyz and the log, naming the channel when there is one.
func (p Problem) String() string {
	if p.Channel == "" {
		return "ses: " + p.Msg
	}
	return fmt.Sprintf("ses channel %q: %s", p.Channel, p.Msg)
}

// alertKey identifies a live alert: account-wide alerts have no channel.
type alertKey struct{ channel, reason string }

// checkTimeout bounds each start-up call, so an unreachable endpoint (or a credential chain waiting on
// instance metadata) cannot hold start-up.
const checkTimeout = 10 * time.Second

// Check asks SES, when it is reachable, for the account's send quota (logged), for each channel's
// sending identity (identity.go: verified, DKIM, custom MAIL FROM domain) and, for every Force TLS
// channel, for its configuration set's TLS policy, which must be REQUIRE. It returns (and keeps for
// Problems) what must be fixed. An unreachable SES is logged and is not a Problem: mail waits in the
// queue until SES answers. After a mismatch, Deliver defers that channel's mail instead of sending it
// without TLS.
func (t *Transport) Check(ctx context.Context) []Problem {
	var problems []Problem
	now := t.now()

	actx, cancel := context.WithTimeout(ctx, checkTimeout)
	acct, err := t.api.GetAccount(actx, &sesv2.GetAccountInput{})
	cancel()
	switch {
	case err != nil:
		rerr := classify(err)
		t.log.Warn("ses account not checked", "reason", rerr.Reason, "err", err)
		if rerr.Reason == ReasonAuth {
			problems = append(problems, Problem{Reason: ReasonAuth, Since: now,
				Msg: "SES refused mailgate's credentials: " + rerr.Msg})
		}
	default:
		q := acct.SendQuota
		if q == nil {
			q = &types.SendQuota{}
		}
		t.log.Info("ses account", "max_send_rate", q.MaxSendRate, "max_24h_send", q.Max24HourSend,
			"sent_last_24h", q.SentLast24Hours, "sending_enabled", acct.SendingEnabled,
			"production_access", acct.ProductionAccessEnabled, "enforcement", aws.ToString(acct.EnforcementStatus))
		if !acct.SendingEnabled {
			problems = append(problems, Problem{Reason: ReasonSendingPaused, Since: now,
				Msg: "sending is disabled for the SES account (enforcement status " + aws.ToString(acct.EnforcementStatus) + ")"})
		}
		if t.bucket != nil && q.MaxSendRate > 0 && t.bucket.perSecond() > q.MaxSendRate {
			t.log.Warn("ses configured send rate is above the account's maximum",
				"configured", t.bucket.perSecond(), "account_max", q.MaxSendRate)
		}
	}

	problems = append(problems, t.checkIdentities(ctx, now)...)
	for _, name := range sortedChannels(t.channels) {
		ch := t.channels[name]
		if !ch.ForceTLS {
			continue
		}
		if p, ok := t.checkTLSPolicy(ctx, name, ch, now); !ok {
			problems = append(problems, p)
		}
	}

	t.mu.Lock()
	t.checked = problems
	t.mu.Unlock()
	for _, p := range problems {
		t.log.Error("ses problem", "channel", p.Channel, "reason", p.Reason, "problem", p.Msg)
	}
	return problems
}

// checkTLSPolicy confirms that a Force TLS channel's configuration set requires TLS.
func (t *Transport) checkTLSPolicy(ctx context.Context, name string, ch Channel, now time.Time) (Problem, bool) {
	if err := ValidateChannel(name, ch); err != nil {
		return Problem{Channel: name, Reason: "tls_policy", Since: now, Msg: err.Error()}, false
	}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	out, err := t.api.GetConfigurationSet(cctx, &sesv2.GetConfigurationSetInput{ConfigurationSetName: aws.String(ch.ConfigurationSet)})
	cancel()
	if err != nil {
		rerr := classify(err)
		var nf *types.NotFoundException
		if errors.As(err, &nf) || rerr.Reason == ReasonNotFound {
			t.setPolicy(ch.ConfigurationSet, false)
			return Problem{Channel: name, Reason: "tls_policy", Since: now,
				Msg: fmt.Sprintf("configuration set %q does not exist in SES", ch.ConfigurationSet)}, false
		}
		t.log.Warn("ses configuration set not checked", "channel", name, "configuration_set", ch.ConfigurationSet,
			"reason", rerr.Reason, "err", err)
		t.mu.Lock()
		require, known := t.policies[ch.ConfigurationSet]
		t.mu.Unlock()
		if known && require {
			return Problem{}, true // confirmed before; a failed re-check does not un-confirm it
		}
		// Fail closed: a policy mailgate could not read is not a policy it may rely on.
		return Problem{Channel: name, Reason: "tls_policy", Since: now,
			Msg: fmt.Sprintf("the TLS policy of configuration set %q could not be confirmed (%s); Force TLS mail waits until SES answers",
				ch.ConfigurationSet, rerr.Msg)}, false
	}
	var policy types.TlsPolicy
	if out.DeliveryOptions != nil {
		policy = out.DeliveryOptions.TlsPolicy
	}
	if policy != types.TlsPolicyRequire {
		t.setPolicy(ch.ConfigurationSet, false)
		if policy == "" {
			policy = types.TlsPolicyOptional // SES's default when DeliveryOptions are absent
		}
		return Problem{Channel: name, Reason: "tls_policy", Since: now,
			Msg: fmt.Sprintf("Force TLS needs configuration set %q to have TLS policy REQUIRE, it has %s; its mail is deferred until fixed",
				ch.ConfigurationSet, policy)}, false
	}
	t.setPolicy(ch.ConfigurationSet, true)
	t.log.Info("ses configuration set requires TLS", "channel", name, "configuration_set", ch.ConfigurationSet)
	return Problem{}, true
}

func (t *Transport) setPolicy(set string, require bool) {
	t.mu.Lock()
	t.policies[set] = require
	t.mu.Unlock()
}

// Watch re-runs Check every interval until ctx ends, and soon after Deliver found a Force TLS channel
// whose policy is not confirmed (at most once per minRecheck): a configuration set changed to
// OPTIONAL in the console stops Force TLS mail within one interval, and mail held because SES was
// unreachable at start goes once SES answers, without a reload.
func (t *Transport) Watch(ctx context.Context, interval time.Duration) {
	const minRecheck = 30 * time.Second
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-t.recheck:
			if wait := minRecheck - time.Since(last); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		}
		last = time.Now()
		t.Check(ctx)
	}
}

// Problems returns what the last Check found plus the live alerts raised by SES answers since
// (account suspended, sending paused, credentials refused, configuration set missing), for /readyz.
// A live alert clears when a message on the same channel (or any, for account-wide alerts) is sent.
func (t *Transport) Problems() []Problem {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := append([]Problem(nil), t.checked...)
	keys := make([]alertKey, 0, len(t.alerts))
	for k := range t.alerts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].channel != keys[j].channel {
			return keys[i].channel < keys[j].channel
		}
		return keys[i].reason < keys[j].reason
	})
	for _, k := range keys {
		ps = append(ps, t.alerts[k])
	}
	return ps
}

// noteAlert raises an alert for SES answers an operator must act on; the message itself is deferred.
func (t *Transport) noteAlert(channel string, rerr *relay.Error) {
	var k alertKey
	var msg string
	switch rerr.Reason {
	case ReasonAccountSuspended:
		k, msg = alertKey{"", rerr.Reason}, "the SES account is suspended; mail is deferred, not bounced: "+rerr.Msg
	case ReasonAuth:
		k, msg = alertKey{"", rerr.Reason}, "SES refused mailgate's credentials; mail is deferred: "+rerr.Msg
	case ReasonSendingPaused:
		k, msg = alertKey{channel, rerr.Reason}, "SES sending is paused; mail is deferred: "+rerr.Msg
	case ReasonNotFound:
		k, msg = alertKey{channel, rerr.Reason}, "SES does not know this channel's configuration set; mail is deferred: "+rerr.Msg
	case ReasonIdentity, ReasonMailFrom:
		k, msg = alertKey{channel, rerr.Reason}, "SES refuses this channel's sending identity; verify it (or leave the sandbox); mail is deferred: "+rerr.Msg
	default:
		return
	}
	t.mu.Lock()
	_, already := t.alerts[k]
	if !already {
		t.alerts[k] = Problem{Channel: k.channel, Reason: k.reason, Msg: msg, Since: t.now()}
	}
	t.mu.Unlock()
	if !already {
		t.log.Error("ses alert", "channel", k.channel, "reason", k.reason, "problem", msg)
	}
}

// clearAlerts drops the alerts a successful send on channel disproves.
func (t *Transport) clearAlerts(channel string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range t.alerts {
		if k.channel == "" || k.channel == channel {
			delete(t.alerts, k)
			t.log.Info("ses alert cleared", "channel", k.channel, "reason", k.reason)
		}
	}
}

func sortedChannels(m map[string]Channel) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
