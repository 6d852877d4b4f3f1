package relay_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/mailgate/mailgate/relay"
)

// TestClassify covers every row of DESIGN §4's table "Whose fault, and what follows", with the SMTP
// replies each row names at the stages they come at. The SES rows are in relay/deliver/ses (its table
// test runs every SES error through its mapping and this function).
func TestClassify(t *testing.T) {
	reply := func(code int, enh relay.EnhancedCode, st relay.Stage) error {
		return &relay.Error{Code: code, Enhanced: enh, Stage: st, Msg: "upstream text"}
	}
	tests := []struct {
		row  string
		err  error
		want relay.Fault
	}{
		{"delivered", nil, relay.FaultNone},

		// the address: bounce + suppress
		{"address 5.1.1", reply(550, "5.1.1", relay.StageRcpt), relay.FaultAddress},
		{"address 5.1.2", reply(550, "5.1.2", relay.StageRcpt), relay.FaultAddress},
		{"address 5.1.3 (501)", reply(501, "5.1.3", relay.StageRcpt), relay.FaultAddress},
		{"address 5.1.6", reply(551, "5.1.6", relay.StageRcpt), relay.FaultAddress},
		{"address 5.1.10 null MX", reply(556, "5.1.10", relay.StageRcpt), relay.FaultAddress},
		{"address 5.2.1 disabled", reply(550, "5.2.1", relay.StageRcpt), relay.FaultAddress},
		{"address fault stated by the transport", &relay.Error{Code: 550, Enhanced: "5.1.1", Fault: relay.FaultAddress}, relay.FaultAddress},

		// the message: bounce, not suppressed
		{"message 5.3.4 at DATA", reply(552, "5.3.4", relay.StageData), relay.FaultMessage},
		{"message 5.3.4 at MAIL (SIZE)", reply(552, "5.3.4", relay.StageMail), relay.FaultMessage},
		{"message 552 at MAIL, no enhanced code", reply(552, "5.0.0", relay.StageMail), relay.FaultMessage},
		{"message 5.6.0 content", reply(554, "5.6.0", relay.StageData), relay.FaultMessage},
		{"message 554 5.7.1 spam at end of DATA", reply(554, "5.7.1", relay.StageData), relay.FaultMessage},
		{"message: 5.1.1 after the dot covers every recipient", reply(550, "5.1.1", relay.StageData), relay.FaultMessage},
		{"message: plain 550 at RCPT is no evidence against the address", reply(550, "5.0.0", relay.StageRcpt), relay.FaultMessage},
		{"message: 5.2.2 mailbox full", reply(552, "5.2.2", relay.StageRcpt), relay.FaultMessage},
		{"message: smtp-sink's 500 5.3.0", reply(500, "5.3.0", relay.StageRcpt), relay.FaultMessage},
		{"message: mailgate's size check", relay.Errorf(552, relay.CodeTooBig, "size", "too big"), relay.FaultMessage},

		// Force TLS not met: bounce at once, not suppressed, alert
		{"tls 5.7.10", &relay.Error{Code: 554, Enhanced: relay.CodeEncryptionRequired, Reason: "tls_required", Stage: relay.StageTLS}, relay.FaultTLS},

		// mailgate's or the relay's setup: defer + alert
		{"setup: MAIL FROM refused 553 5.7.1", reply(553, "5.7.1", relay.StageMail), relay.FaultSetup},
		{"setup: MAIL FROM refused 550 5.7.1", reply(550, "5.7.1", relay.StageMail), relay.FaultSetup},
		{"setup: sender 5.1.8 at MAIL", reply(553, "5.1.8", relay.StageMail), relay.FaultSetup},
		{"setup: relay access denied 554 5.7.1 at RCPT", reply(554, "5.7.1", relay.StageRcpt), relay.FaultSetup},
		{"setup: sender 5.1.7 at RCPT", reply(550, "5.1.7", relay.StageRcpt), relay.FaultSetup},
		{"setup: 535 at AUTH", reply(535, "5.7.8", relay.StageAuth), relay.FaultSetup},
		{"setup: 535 5.7.139 SMTP AUTH disabled", reply(535, "5.7.139", relay.StageAuth), relay.FaultSetup},
		{"setup: 535 5.7.3 at AUTH", reply(535, "5.7.3", relay.StageAuth), relay.FaultSetup},
		{"setup: 530 5.7.57 at MAIL", reply(530, "5.7.57", relay.StageMail), relay.FaultSetup},
		{"setup: 5.7.30 basic auth off", reply(535, "5.7.30", relay.StageAuth), relay.FaultSetup},
		{"setup: 5.7.60 no Send As, after the dot", reply(550, "5.7.60", relay.StageData), relay.FaultSetup},
		{"setup: 5.7.233 tenant external recipient limit, after the dot", reply(550, "5.7.233", relay.StageData), relay.FaultSetup},
		{"setup: 5.7.708 tenant blocked, after the dot", reply(550, "5.7.708", relay.StageData), relay.FaultSetup},
		{"setup: 503 nested MAIL (no enhanced code)", reply(503, "5.0.0", relay.StageMail), relay.FaultSetup},
		{"setup: 503 5.5.1 bad sequence at RCPT", reply(503, "5.5.1", relay.StageRcpt), relay.FaultSetup},
		{"setup: 554 banner", reply(554, "5.0.0", relay.StageConnect), relay.FaultSetup},
		{"setup stated by the transport (no token)", &relay.Error{Code: 451, Enhanced: "4.7.0", Fault: relay.FaultSetup}, relay.FaultSetup},

		// temporary: retry with backoff
		{"temporary 451 at RCPT", reply(451, "4.3.0", relay.StageRcpt), relay.FaultTemporary},
		{"temporary 432 4.3.2 throttled", reply(432, "4.3.2", relay.StageMail), relay.FaultTemporary},
		{"temporary 421", reply(421, "4.4.2", relay.StageData), relay.FaultTemporary},
		{"temporary 429-style throttling", reply(451, "4.4.5", ""), relay.FaultTemporary},
		{"temporary network error", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, relay.FaultTemporary},
		{"temporary timeout", context.DeadlineExceeded, relay.FaultTemporary},
		{"temporary wrapped relay error", fmt.Errorf("attempt: %w", reply(451, "4.4.1", relay.StageConnect)), relay.FaultTemporary},
	}
	for _, tc := range tests {
		if got := relay.Classify(tc.err); got != tc.want {
			t.Errorf("%s: Classify(%v) = %s, want %s", tc.row, tc.err, got, tc.want)
		}
	}
}

// TestFaultOutcomes pins what each fault does: only the address suppresses, setup never bounces.
func TestFaultOutcomes(t *testing.T) {
	tests := []struct {
		f                          relay.Fault
		bounces, suppresses, alert bool
	}{
		{relay.FaultNone, false, false, false},
		{relay.FaultTemporary, false, false, false},
		{relay.FaultSetup, false, false, true},
		{relay.FaultMessage, true, false, false},
		{relay.FaultTLS, true, false, true},
		{relay.FaultAddress, true, true, false},
	}
	for _, tc := range tests {
		if tc.f.Bounces() != tc.bounces || tc.f.Suppresses() != tc.suppresses || tc.f.Alerts() != tc.alert {
			t.Errorf("%s: bounces=%v suppresses=%v alerts=%v", tc.f, tc.f.Bounces(), tc.f.Suppresses(), tc.f.Alerts())
		}
		if relay.FaultFromString(tc.f.String()) != tc.f {
			t.Errorf("%s does not round-trip through its name", tc.f)
		}
	}
	if relay.FaultFromString("garbage") != relay.FaultTemporary {
		t.Error("an unknown stored fault must neither bounce nor suppress")
	}
}

// FuzzClassify: whatever the code, enhanced code and stage, a fault that suppresses comes only from an
// RCPT refusal with an address status code (or the transport's explicit verdict), and a 4xx never bounces.
func FuzzClassify(f *testing.F) {
	f.Add(550, "5.1.1", "rcpt")
	f.Add(553, "5.7.1", "mail")
	f.Add(421, "4.4.2", "data")
	f.Add(535, "5.7.139", "auth")
	f.Fuzz(func(t *testing.T, code int, enh, stage string) {
		err := &relay.Error{Code: code, Enhanced: relay.EnhancedCode(enh), Stage: relay.Stage(stage)}
		got := relay.Classify(err)
		if got.Suppresses() && stage != string(relay.StageRcpt) {
			t.Fatalf("%d %s at %q suppresses", code, enh, stage)
		}
		if code >= 400 && code < 500 && got.Bounces() {
			t.Fatalf("%d %s at %q bounces", code, enh, stage)
		}
	})
}
