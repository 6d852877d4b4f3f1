package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

func sesConfig(endpoint string) string {
	return `
ses:
  region: eu-west-1
  endpoint: ` + endpoint + `
  event_topics: [arn:aws:sns:eu-west-1:123456789012:mailgate-events]
events:
  address: {{EVENTS}}
channels:
  - name: Support
    from: support@example.com
    display_name: Example Support
    business_unit: BU
    transport: ses
    outbound_flow: true
    ticket: {style: braces}
` + supportRoles
}

var sesEnv = []string{"AWS_ACCESS_KEY_ID=AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY=mailgate-test-aws-secret", "AWS_REGION=eu-west-1"}

// TestSwaksToSESEmulator: swaks → mailgate → aws-ses-v2-local; the emulator holds the composed mail.
func TestSwaksToSESEmulator(t *testing.T) {
	emu := peertest.SESEmulator(t)
	in := newInstance(t, sesConfig(emu.URL))
	in.extraEnv = sesEnv
	in.start()
	out, code := in.swaks("--to", "customer@example.net", "--h-From", "support@example.com", "--h-Subject", "Parcel status",
		"--add-header", "X-Mailgate-Ticket: 777001", "--body", "Your parcel is on its way.")
	if code != 0 {
		t.Fatalf("swaks: %d\n%s", code, out)
	}
	var store struct {
		Emails []struct {
			From    string `json:"from"`
			Subject string `json:"subject"`
			Body    struct {
				Text string `json:"text"`
			} `json:"body"`
		} `json:"emails"`
	}
	waitFor(t, 15*time.Second, "the SES emulator to hold the message", func() bool {
		resp, err := http.Get(emu.URL + "/store")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(resp.Body).Decode(&store)
		return len(store.Emails) > 0
	})
	e := store.Emails[0]
	if e.Subject != "Parcel status {#777001}" || !strings.Contains(e.From, "Example Support") || !strings.Contains(e.Body.Text, "on its way") {
		t.Fatalf("SES emulator holds %+v", e)
	}
}

// TestSESThrottlingAndRejection: against a server answering in SES's own error shapes, throttling is
// retried until delivered, a content rejection ends in `bounces list` as a message fault that does not
// suppress, and an unverified sending identity (the account's problem) is deferred, never bounced.
func TestSESThrottlingAndRejection(t *testing.T) {
	var mu sync.Mutex
	var authHeader string
	calls := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		body := string(b)
		mu.Lock()
		defer mu.Unlock()
		authHeader = r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v2/email/identities/"):
			// The identity check at start: the sending domain is verified (SES's GetEmailIdentity shape).
			io.WriteString(w, `{"IdentityType":"DOMAIN","VerifiedForSendingStatus":true,"VerificationStatus":"SUCCESS"}`)
		case strings.Contains(body, "rejected@example.net"):
			w.Header().Set("X-Amzn-ErrorType", "MessageRejected")
			w.WriteHeader(400)
			io.WriteString(w, `{"message":"Message rejected: Virus detected"}`)
		case strings.Contains(body, "sandboxed@example.net"):
			calls["sandboxed"]++
			w.Header().Set("X-Amzn-ErrorType", "MessageRejected")
			w.WriteHeader(400)
			io.WriteString(w, `{"message":"Email address is not verified. The following identities failed the check in region EU-WEST-1: sandboxed@example.net"}`)
		case strings.Contains(body, "slow@example.net") && calls["slow"] < 2:
			calls["slow"]++
			w.Header().Set("X-Amzn-ErrorType", "TooManyRequestsException")
			w.WriteHeader(429)
			io.WriteString(w, `{"message":"Too many requests"}`)
		default:
			if strings.Contains(body, "slow@example.net") {
				calls["slow-ok"]++
			}
			io.WriteString(w, `{"MessageId":"0100018c-test"}`)
		}
	}))
	defer srv.Close()
	// Static credentials from the configuration this time (the secret key as a reference), not the
	// AWS default chain.
	in := newInstance(t, strings.Replace(sesConfig(srv.URL), "  region: eu-west-1\n",
		"  region: eu-west-1\n  access_key_id: AKIDCONFIGKEY\n  secret_access_key: env:MG_SES_SECRET\n", 1))
	in.extraEnv = []string{"MG_SES_SECRET=" + sesConfigSecret}
	in.start()
	if out, code := in.swaks("--to", "slow@example.net", "--h-From", "support@example.com"); code != 0 {
		t.Fatalf("swaks: %d\n%s", code, out)
	}
	if out, code := in.swaks("--to", "rejected@example.net", "--h-From", "support@example.com"); code != 0 {
		t.Fatalf("swaks: %d\n%s", code, out)
	}
	if out, code := in.swaks("--to", "sandboxed@example.net", "--h-From", "support@example.com"); code != 0 {
		t.Fatalf("swaks: %d\n%s", code, out)
	}
	waitFor(t, 20*time.Second, "the throttled message to be delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls["slow-ok"] == 1
	})
	waitFor(t, 10*time.Second, "the rejection in bounces list", func() bool {
		out, _ := in.mailgate("bounces", "list", "--config", in.config)
		return strings.Contains(out, "rejected@example.net")
	})
	waitFor(t, 10*time.Second, "the sandboxed message's attempt", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls["sandboxed"] >= 1
	})
	out, _ := in.mailgate("bounces", "list", "--config", in.config)
	if strings.Contains(out, "slow@example.net") || strings.Contains(out, "sandboxed@example.net") ||
		!regexp.MustCompile(`rejected@example.net.* message +no .*Virus detected`).MatchString(out) {
		t.Fatalf("bounces list:\n%s", out)
	}
	// Neither address is suppressed: the next submissions are accepted.
	for _, rcpt := range []string{"rejected@example.net", "sandboxed@example.net"} {
		if out, code := in.swaks("--to", rcpt, "--h-From", "support@example.com"); code != 0 {
			t.Fatalf("%s refused after a fault that was not its own: %d\n%s", rcpt, code, out)
		}
	}
	mu.Lock()
	signedWith := authHeader
	mu.Unlock()
	if !strings.Contains(signedWith, "Credential=AKIDCONFIGKEY/") {
		t.Fatalf("requests were not signed with the configured access key: %q", signedWith)
	}
	if strings.Contains(in.logs()+out, sesConfigSecret) {
		t.Fatal("the SES secret access key appears in mailgate's output")
	}
}

const sesConfigSecret = "mailgate-e2e-ses-secret-key-7d1c"
