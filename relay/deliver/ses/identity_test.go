package ses

import (
	"context"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/relay"
)

// identityJSON is a GetEmailIdentity answer in SES's shape.
func identityJSON(kind string, verified bool, dkim, mailFrom, mfStatus, behaviour string) string {
	s := `{"IdentityType":"` + kind + `","VerifiedForSendingStatus":` + map[bool]string{true: "true", false: "false"}[verified] +
		`,"VerificationStatus":"` + map[bool]string{true: "SUCCESS", false: "PENDING"}[verified] + `"`
	if dkim != "" {
		s += `,"DkimAttributes":{"SigningEnabled":true,"Status":"` + dkim + `","SigningAttributesOrigin":"AWS_SES"}`
	}
	if mailFrom != "" {
		s += `,"MailFromAttributes":{"MailFromDomain":"` + mailFrom + `","MailFromDomainStatus":"` + mfStatus + `","BehaviorOnMxFailure":"` + behaviour + `"}`
	}
	return s + "}"
}

// Identity checks at start and re-check: an unverified or unknown identity, and a custom MAIL FROM that
// fails with REJECT_MESSAGE, hold the channel's mail as a setup fault (no SendEmail) with a remedy in
// Problems; failed DKIM and a MAIL FROM that falls back are reported or logged but mail flows; a
// verified address identity suffices even when its domain is not; fixing the identity releases the
// mail at the next check.
func TestIdentityChecks(t *testing.T) {
	f := newFakeSES(t)
	f.account = `{"SendingEnabled":true,"SendQuota":{"MaxSendRate":14}}`
	f.identities["verified.example"] = identityJSON("DOMAIN", true, "SUCCESS", "bounce.verified.example", "SUCCESS", "USE_DEFAULT_VALUE")
	f.identities["pending.example"] = identityJSON("DOMAIN", false, "PENDING", "", "", "")
	f.identities["mf.example"] = identityJSON("DOMAIN", true, "SUCCESS", "bounce.mf.example", "FAILED", "REJECT_MESSAGE")
	f.identities["fallback.example"] = identityJSON("DOMAIN", true, "SUCCESS", "bounce.fallback.example", "FAILED", "USE_DEFAULT_VALUE")
	f.identities["dkim.example"] = identityJSON("DOMAIN", true, "FAILED", "", "", "")
	f.identities["only-address@unverified-domain.example"] = identityJSON("EMAIL_ADDRESS", true, "", "", "", "")
	f.identities["unverified-domain.example"] = identityJSON("DOMAIN", false, "FAILED", "", "", "")
	chans := map[string]Channel{
		"Verified": {From: "support@verified.example"}, "Pending": {From: "help@pending.example"},
		"Unknown": {From: "x@unknown.example"}, "MailFrom": {From: "a@mf.example"}, "Fallback": {From: "b@fallback.example"},
		"DKIM": {From: "c@dkim.example"}, "Address": {From: "only-address@unverified-domain.example"},
		// Sending authorization: the identity is another account's, not checked here, and sent with its ARN
		// and the channel's tenant.
		"Delegated": {From: "d@partner.example", TenantName: "retail-eu", IdentityARN: "arn:aws:ses:eu-west-1:123456789012:identity/partner.example"},
	}
	tr := newTestTransport(t, f.URL, Options{Channels: chans})
	problems := tr.Check(context.Background())
	byChannel := map[string]Problem{}
	for _, p := range problems {
		byChannel[p.Channel] = p
	}
	want := map[string]string{"Pending": ReasonIdentity, "Unknown": ReasonIdentity, "MailFrom": ReasonMailFrom, "DKIM": ReasonDKIM}
	if len(byChannel) != len(want) {
		t.Fatalf("problems: %v", problems)
	}
	for ch, reason := range want {
		if p := byChannel[ch]; p.Reason != reason {
			t.Errorf("channel %s: problem %+v, want reason %s", ch, p, reason)
		}
	}
	if p := byChannel["Unknown"]; !strings.Contains(p.Msg, "verify the domain unknown.example") {
		t.Errorf("unknown identity remedy: %s", p.Msg)
	}
	if p := byChannel["MailFrom"]; !strings.Contains(p.Msg, "MX record for bounce.mf.example") {
		t.Errorf("MAIL FROM remedy: %s", p.Msg)
	}

	deliver := func(ch string) error {
		m := testMessage(composed("Hi", "text"), "customer@example.org")
		m.Channel = ch
		return tr.Deliver(context.Background(), m).Errs[0]
	}
	for _, ch := range []string{"Pending", "Unknown", "MailFrom"} {
		err := deliver(ch)
		re, ok := relay.AsError(err)
		if !ok || relay.Classify(re) != relay.FaultSetup || re.Remedy == "" {
			t.Fatalf("channel %s: %v", ch, err)
		}
	}
	if n := len(f.requests()); n != 0 {
		t.Fatalf("held channels reached SendEmail %d times", n)
	}
	for _, ch := range []string{"Verified", "Fallback", "DKIM", "Address"} {
		if err := deliver(ch); err != nil {
			t.Fatalf("channel %s: %v", ch, err)
		}
	}
	if err := deliver("Delegated"); err != nil {
		t.Fatalf("delegated identity: %v", err)
	}
	reqs := f.requests()
	if reqs[0].FromEmailAddress != "support@verified.example" || reqs[0].TenantName != "" {
		t.Fatalf("FromEmailAddress %q: the channel's From is the sending identity, not the envelope sender", reqs[0].FromEmailAddress)
	}
	if d := reqs[len(reqs)-1]; d.TenantName != "retail-eu" || d.FromEmailAddressIdentityArn != "arn:aws:ses:eu-west-1:123456789012:identity/partner.example" {
		t.Fatalf("tenant %q, identity ARN %q", d.TenantName, d.FromEmailAddressIdentityArn)
	}

	f.mu.Lock()
	f.identities["pending.example"] = identityJSON("DOMAIN", true, "SUCCESS", "", "", "")
	f.mu.Unlock()
	tr.Check(context.Background())
	if err := deliver("Pending"); err != nil {
		t.Fatalf("after verification: %v", err)
	}
	for _, p := range tr.Problems() {
		if p.Channel == "Pending" {
			t.Fatalf("problem kept after the fix: %v", p)
		}
	}
}
