package events

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// FuzzNotification feeds arbitrary bodies to the SNS envelope parser, the canonical-string builder, the
// SES event parser and the whole handler. Invariants: nothing panics; the canonical string is a
// sequence of "Name\nvalue\n" pairs; bounce codes are always permanent; and since no fuzzed body carries
// a signature made with the test key, the handler never answers 2xx and never touches the store.
func FuzzNotification(f *testing.F) {
	x := newHarness(f)
	e := notification("sns-seed", bounceEvent("notificationType", "Bounce", "Permanent", "fb-s", "gone@example.org"))
	sign(f, e, "2", x.pki.key, certURL)
	seed, _ := json.Marshal(e)
	f.Add(seed)
	f.Add([]byte(bounceEvent("eventType", "Bounce", "Transient", "fb", "a@b")))
	f.Add([]byte(`{"notificationType":"Complaint","complaint":{"complainedRecipients":[{"emailAddress":"x@y"}]},"mail":{}}`))
	f.Add([]byte(`{"eventType":"DeliveryDelay","deliveryDelay":{"delayedRecipients":[]}}`))
	f.Add([]byte(`{"Type":"SubscriptionConfirmation","MessageId":"m","TopicArn":"t","Timestamp":"x","SignatureVersion":"1","Signature":"AA==","SigningCertURL":"https://sns.eu-west-1.amazonaws.com/a.pem","SubscribeURL":"https://sns.eu-west-1.amazonaws.com/?x"}`))
	f.Add([]byte(`{"Type":"Notification","Subject":null,"Message":"","MessageId":"","TopicArn":""}`))

	f.Fuzz(func(t *testing.T, body []byte) {
		if env, err := ParseEnvelope(body); err == nil {
			if s, err := env.StringToSign(); err == nil {
				lines := strings.Split(s, "\n")
				if len(lines) < 2 || lines[len(lines)-1] != "" {
					t.Fatalf("canonical string not newline-terminated: %q", s)
				}
				if lines[0] != "Message" {
					t.Fatalf("canonical string does not start with Message: %q", s)
				}
			}
			_, _ = CheckSNSURL(env.SigningCertURL)
			if ev, err := ParseEvent([]byte(env.Message)); err == nil {
				checkEvent(t, ev)
			}
		}
		if ev, err := ParseEvent(body); err == nil {
			checkEvent(t, ev)
		}

		rec := x.postRaw(body, "")
		if rec.Code >= 200 && rec.Code < 300 && string(body) != string(seed) {
			t.Fatalf("unsigned fuzz body accepted with %d: %q", rec.Code, body)
		}
		if rec.Code == http.StatusOK {
			return
		}
		bounces, sup := x.store.snapshot()
		if len(bounces) > 1 || len(sup) > 1 { // the signed seed alone, recorded before fuzzing
			t.Fatalf("store changed by a refused body: %v %v", bounces, sup)
		}
	})
}

func checkEvent(t *testing.T, ev *Event) {
	if ev.Kind() == "" {
		t.Fatal("event without a kind parsed")
	}
	_ = ev.Mail.HeaderMessageID()
	if ev.Bounce != nil {
		for _, r := range ev.Bounce.BouncedRecipients {
			code, enh := bounceCodes(r, ev.Bounce.BounceSubType)
			p, ok := enh.Parts()
			if code < 500 || code > 599 || !ok || p[0] != 5 {
				t.Fatalf("bounce codes %d %q from %+v", code, enh, r)
			}
		}
	}
}
