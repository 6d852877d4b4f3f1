package ses

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/mailgate/mailgate/relay/peertest"
)

// emulatorAccount is a GetAccount answer aws-ses-v2-local serves when AWS_SES_ACCOUNT is set (its
// schema wants every field).
const emulatorAccount = `{"DedicatedIpAutoWarmupEnabled":false,"Details":{"AdditionalContactEmailAddresses":[],"ContactLanguage":"EN","MailType":"TRANSACTIONAL","ReviewDetails":{"CaseId":"1","Status":"GRANTED"},"UseCaseDescription":"contact center","WebsiteURL":"https://example.com"},"EnforcementStatus":"HEALTHY","ProductionAccessEnabled":true,"SendingEnabled":true,"SendQuota":{"Max24HourSend":50000,"MaxSendRate":14,"SentLast24Hours":3},"SuppressionAttributes":{"SuppressedReasons":["BOUNCE","COMPLAINT"]}}`

type storedEmail struct {
	MessageID   string `json:"messageId"`
	From        string `json:"from"`
	Destination struct {
		To []string `json:"to"`
	} `json:"destination"`
	Subject string `json:"subject"`
	Body    struct {
		Text string `json:"text"`
	} `json:"body"`
}

func emulatorStore(t *testing.T, url string) []storedEmail {
	t.Helper()
	resp, err := http.Get(url + "/store")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var store struct{ Emails []storedEmail }
	if err := json.NewDecoder(resp.Body).Decode(&store); err != nil {
		t.Fatal(err)
	}
	return store.Emails
}

// TestEmulatorDeliver sends a composed raw message through the real SDK to aws-ses-v2-local and finds
// it, parsed, in the emulator's store with the MessageId Deliver reported.
func TestEmulatorDeliver(t *testing.T) {
	emu := peertest.SESEmulator(t, "AWS_SES_ACCOUNT="+emulatorAccount)
	var logs bytes.Buffer
	tr := newTestTransport(t, emu.URL, Options{
		Logger:      slog.New(slog.NewTextHandler(&logs, nil)),
		Channels:    map[string]Channel{"Support": {ConfigurationSet: "support-events", From: "support@example.com"}},
		MaxSendRate: 14,
	})

	// Start-up check against the emulator: the account quota is read and logged. (The emulator has no
	// configuration sets, so no Force TLS channel is configured here; TestForceTLS covers that.)
	if p := tr.Check(context.Background()); len(p) != 0 {
		t.Fatalf("problems: %v", p)
	}
	if !strings.Contains(logs.String(), "max_send_rate=14") || !strings.Contains(logs.String(), "sent_last_24h=3") {
		t.Fatalf("quota not logged:\n%s", logs.String())
	}

	body := composed("Re: Your order [#123456]", "Thank you for contacting Example Support.")
	res := tr.Deliver(context.Background(), testMessage(body, "customer@example.org", "hidden-bcc@example.net"))
	if res.Errs[0] != nil || res.Errs[1] != nil {
		t.Fatalf("deliver: %v", res.Errs)
	}
	if !strings.HasPrefix(res.Reply, "ses-") {
		t.Fatalf("reply %q is not the emulator's MessageId", res.Reply)
	}
	emails := emulatorStore(t, emu.URL)
	if len(emails) != 1 {
		t.Fatalf("store has %d emails", len(emails))
	}
	e := emails[0]
	if e.MessageID != res.Reply {
		t.Errorf("stored id %q, reply %q", e.MessageID, res.Reply)
	}
	if e.Subject != "Re: Your order [#123456]" {
		t.Errorf("subject %q", e.Subject)
	}
	if !strings.Contains(e.Body.Text, "Thank you for contacting Example Support.") {
		t.Errorf("body %q", e.Body.Text)
	}
	if !strings.Contains(e.From, "support@example.com") {
		t.Errorf("from %q", e.From)
	}
}

// TestEmulatorAccountUnavailable: without AWS_SES_ACCOUNT the emulator answers GetAccount with 400;
// Check logs it and reports no Problem (sending still works).
func TestEmulatorAccountUnavailable(t *testing.T) {
	emu := peertest.SESEmulator(t)
	var logs bytes.Buffer
	tr := newTestTransport(t, emu.URL, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if p := tr.Check(context.Background()); len(p) != 0 {
		t.Fatalf("problems: %v", p)
	}
	if !strings.Contains(logs.String(), "ses account not checked") {
		t.Fatalf("log:\n%s", logs.String())
	}
	res := tr.Deliver(context.Background(), testMessage(composed("s", "b"), "a@example.org"))
	if res.Errs[0] != nil {
		t.Fatal(res.Errs[0])
	}
}

// BenchmarkDeliverEmulator measures Deliver of a 10 KiB message through the real SDK to
// aws-ses-v2-local (the emulator's own parsing dominates: it is the upstream baseline).
func BenchmarkDeliverEmulator(b *testing.B) {
	emu := peertest.SESEmulator(b)
	tr := newTestTransport(b, emu.URL, Options{})
	body := composed("bench", strings.Repeat("0123456789abcdef", 640))
	m := testMessage(body, "a@example.org")
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := tr.Deliver(context.Background(), m).Errs[0]; err != nil {
			b.Fatal(err)
		}
		if i%500 == 499 { // the emulator keeps everything in memory
			b.StopTimer()
			resp, err := http.Post(emu.URL+"/clear-store", "application/json", nil)
			if err == nil {
				resp.Body.Close()
			}
			b.StartTimer()
		}
	}
}

// BenchmarkDeliverHTTPTest measures mailgate's own cost per Deliver (SDK signing, JSON and base64
// encoding, the HTTP round trip on loopback) against an httptest SES, for 10 KiB and 1 MiB messages.
func BenchmarkDeliverHTTPTest(b *testing.B) {
	for _, size := range []int{10 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			f := newFakeSES(b)
			f.answer = func(int, sendRequest) sesAnswer { return sesAnswer{} }
			tr := newTestTransport(b, f.URL, Options{})
			body := composed("bench", strings.Repeat("x", size))
			m := testMessage(body, "a@example.org")
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if err := tr.Deliver(context.Background(), m).Errs[0]; err != nil {
					b.Fatal(err)
				}
				f.mu.Lock()
				f.sends = f.sends[:0]
				f.mu.Unlock()
			}
		})
	}
}
