package ses

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/peertest"
	"github.com/mailgate/mailgate/relay/store"
)

// TestErrorTable drives every row of the SES error table through the real SDK against a server that
// answers in SES's own error shapes, and through relay.Classify: whose fault each answer is (DESIGN §4).
// No SES answer at send time is the address's fault (that comes only as a bounce event).
func TestErrorTable(t *testing.T) {
	rows := []struct {
		name     string
		answer   sesAnswer
		code     int
		enhanced relay.EnhancedCode
		reason   string
		fault    relay.Fault
		alert    bool
	}{
		{"Throttling", sesAnswer{400, "ThrottlingException", "Maximum sending rate exceeded.", ""}, 451, "4.4.5", ReasonThrottled, relay.FaultTemporary, false},
		{"TooManyRequests", sesAnswer{429, "TooManyRequestsException", "Too many requests.", ""}, 451, "4.4.5", ReasonThrottled, relay.FaultTemporary, false},
		{"LimitExceeded", sesAnswer{400, "LimitExceededException", "Daily message quota exceeded.", ""}, 451, "4.4.5", ReasonThrottled, relay.FaultTemporary, false},
		{"SendingPaused", sesAnswer{400, "SendingPausedException", "Sending is paused for this account.", ""}, 451, "4.3.2", ReasonSendingPaused, relay.FaultSetup, true},
		{"InternalServiceError", sesAnswer{500, "InternalServiceErrorException", "Internal failure.", ""}, 451, "4.4.0", ReasonUnavailable, relay.FaultTemporary, false},
		{"ServiceUnavailable503", sesAnswer{503, "", "Service Unavailable", ""}, 451, "4.4.0", ReasonUnavailable, relay.FaultTemporary, false},
		{"BadGateway502HTML", sesAnswer{502, "", "", "<html>502 Bad Gateway</html>"}, 451, "4.4.0", ReasonUnavailable, relay.FaultTemporary, false},
		{"MessageRejectedUnverifiedSender", sesAnswer{400, "MessageRejected", "Email address is not verified. The following identities failed the check in region EU-WEST-1: support@example.com", ""}, 451, "4.7.1", ReasonIdentity, relay.FaultSetup, true},
		{"MessageRejectedSandboxRecipient", sesAnswer{400, "MessageRejected", "Email address is not verified. The following identities failed the check in region EU-WEST-1: a@example.org", ""}, 451, "4.7.1", ReasonIdentity, relay.FaultSetup, true},
		{"MessageRejectedContent", sesAnswer{400, "MessageRejected", "Message rejected: Virus detected", ""}, 554, relay.CodePolicy, ReasonRejected, relay.FaultMessage, false},
		{"MailFromDomainNotVerified", sesAnswer{400, "MailFromDomainNotVerifiedException", "MAIL FROM domain mail.example.com is not verified.", ""}, 451, "4.7.1", ReasonMailFrom, relay.FaultSetup, true},
		{"BadRequest", sesAnswer{400, "BadRequestException", "Illegal address", ""}, 554, relay.CodeMalformed, ReasonBadRequest, relay.FaultMessage, false},
		{"AccountSuspended", sesAnswer{400, "AccountSuspendedException", "Your account has been suspended.", ""}, 451, "4.3.2", ReasonAccountSuspended, relay.FaultSetup, true},
		{"RequestTooLarge413", sesAnswer{413, "", "", "<html><head><title>413 Request Entity Too Large</title></head></html>"}, 552, relay.CodeTooBig, ReasonSize, relay.FaultMessage, false},
		{"AccessDenied", sesAnswer{403, "AccessDeniedException", "User is not authorized to perform ses:SendEmail", ""}, 451, relay.CodeTempAuth, ReasonAuth, relay.FaultSetup, true},
		{"ConfigurationSetNotFound", sesAnswer{404, "NotFoundException", "Configuration set <cs> does not exist.", ""}, 451, relay.CodeTempLocal, ReasonNotFound, relay.FaultSetup, true},
		{"UnknownError", sesAnswer{400, "SomethingNewException", "something new", ""}, 451, relay.CodeTempLocal, ReasonError, relay.FaultTemporary, false},
	}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			f := newFakeSES(t)
			f.answer = func(int, sendRequest) sesAnswer { return row.answer }
			tr := newTestTransport(t, f.URL, Options{})
			res := tr.Deliver(context.Background(), testMessage(composed("Hello", "body"), "a@example.org", "b@example.org"))
			if len(res.Errs) != 2 || res.Errs[0] == nil || res.Errs[1] == nil {
				t.Fatalf("want both recipients failed, got %+v", res)
			}
			re, ok := relay.AsError(res.Errs[0])
			if !ok {
				t.Fatalf("not a *relay.Error: %T %v", res.Errs[0], res.Errs[0])
			}
			if re.Code != row.code || re.Enhanced != row.enhanced || re.Reason != row.reason {
				t.Errorf("got %d %s %s, want %d %s %s (%v)", re.Code, re.Enhanced, re.Reason, row.code, row.enhanced, row.reason, re)
			}
			if got := relay.Classify(res.Errs[0]); got != row.fault {
				t.Errorf("fault = %s, want %s", got, row.fault)
			}
			if row.answer.Message != "" && row.answer.ErrorType != "" && !strings.Contains(re.Msg, row.answer.Message) {
				t.Errorf("diagnostic %q does not carry SES's message %q", re.Msg, row.answer.Message)
			}
			if res.Reply != "" {
				t.Errorf("reply %q on failure", res.Reply)
			}
			probs := tr.Problems()
			if row.alert != (len(probs) > 0) {
				t.Errorf("alert = %v, want %v: %v", len(probs) > 0, row.alert, probs)
			}
			if row.alert {
				if probs[0].Reason != row.reason {
					t.Errorf("alert reason %q, want %q", probs[0].Reason, row.reason)
				}
				// A successful send proves the account works again and clears the alert.
				f.answer = nil
				if res := tr.Deliver(context.Background(), testMessage(composed("Hi", "x"), "a@example.org")); res.Errs[0] != nil {
					t.Fatal(res.Errs[0])
				}
				if p := tr.Problems(); len(p) != 0 {
					t.Errorf("alert not cleared by a successful send: %v", p)
				}
			}
		})
	}
}

// TestDeliverEnvelope checks what SES is asked to do: the envelope recipients (including a Bcc
// recipient that is in no header) as Destination, the channel's MAIL FROM, its configuration set, the
// composed bytes unchanged, and the tags that route events back to the queue entry.
func TestDeliverEnvelope(t *testing.T) {
	f := newFakeSES(t)
	tr := newTestTransport(t, f.URL, Options{Channels: map[string]Channel{
		"Support": {ConfigurationSet: "support-events"},
		"Sales":   {ConfigurationSet: "sales-events"},
	}})
	body := composed("Your ticket 123456", "Hello from support")
	m := testMessage(body, "customer@example.org", "hidden-bcc@example.net")
	res := tr.Deliver(context.Background(), m)
	if res.Errs[0] != nil || res.Errs[1] != nil {
		t.Fatalf("deliver: %v", res.Errs)
	}
	if res.Reply != "0102018f-fake-000001" {
		t.Errorf("reply %q, want the SES MessageId", res.Reply)
	}
	reqs := f.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	r := reqs[0]
	if got := strings.Join(r.Destination.ToAddresses, ","); got != "customer@example.org,hidden-bcc@example.net" {
		t.Errorf("destination %q", got)
	}
	if strings.Contains(body, "hidden-bcc") {
		t.Fatal("test message must not name the Bcc recipient in a header")
	}
	if r.FromEmailAddress != "bounces@mail.example.com" {
		t.Errorf("FromEmailAddress %q, want the channel's MAIL FROM", r.FromEmailAddress)
	}
	if r.ConfigurationSetName != "support-events" {
		t.Errorf("configuration set %q", r.ConfigurationSetName)
	}
	if !bytes.Equal(r.Content.Raw.Data, []byte(body)) {
		t.Errorf("raw content changed:\n%q\n%q", r.Content.Raw.Data, body)
	}
	tags := map[string]string{}
	for _, tg := range r.EmailTags {
		tags[tg.Name] = tg.Value
	}
	if tags[TagQueueID] != "q0001" || tags[TagChannel] != "Support" {
		t.Errorf("tags %v", tags)
	}

	// A channel name SES cannot carry as a tag value is left out rather than failing the send.
	m2 := testMessage(body, "customer@example.org")
	m2.Channel = "Sales"
	m2.QueueID = "q/2"
	if res := tr.Deliver(context.Background(), m2); res.Errs[0] != nil {
		t.Fatal(res.Errs[0])
	}
	r2 := f.requests()[1]
	if r2.ConfigurationSetName != "sales-events" || len(r2.EmailTags) != 1 {
		t.Errorf("second request: set %q tags %v", r2.ConfigurationSetName, r2.EmailTags)
	}
}

// TestDeliverBatches sends an envelope longer than SES's 50 destinations in several calls, with the
// per-recipient results aligned when one batch fails.
func TestDeliverBatches(t *testing.T) {
	f := newFakeSES(t)
	f.answer = func(n int, _ sendRequest) sesAnswer {
		if n == 2 {
			return sesAnswer{Status: 400, ErrorType: "ThrottlingException", Message: "Maximum sending rate exceeded."}
		}
		return sesAnswer{}
	}
	tr := newTestTransport(t, f.URL, Options{})
	var rcpts []string
	for i := range 120 {
		rcpts = append(rcpts, "r"+string(rune('a'+i%26))+strings.Repeat("x", i/26)+"@example.org")
	}
	res := tr.Deliver(context.Background(), testMessage(composed("s", "b"), rcpts...))
	reqs := f.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d calls, want 3", len(reqs))
	}
	for i, want := range []int{50, 50, 20} {
		if got := len(reqs[i].Destination.ToAddresses); got != want {
			t.Errorf("batch %d has %d destinations, want %d", i, got, want)
		}
	}
	for i, err := range res.Errs {
		inFailed := i >= 50 && i < 100
		if (err != nil) != inFailed {
			t.Fatalf("recipient %d: err %v", i, err)
		}
	}
	if res.Reply != "0102018f-fake-000001, 0102018f-fake-000003" {
		t.Errorf("reply %q", res.Reply)
	}
}

// TestThrottledThenDelivered is the queue's view of throttling: the first attempt is deferred with a
// temporary error, the next attempt is delivered.
func TestThrottledThenDelivered(t *testing.T) {
	f := newFakeSES(t)
	f.answer = func(n int, _ sendRequest) sesAnswer {
		if n == 1 {
			return sesAnswer{Status: 400, ErrorType: "ThrottlingException", Message: "Maximum sending rate exceeded."}
		}
		return sesAnswer{}
	}
	tr := newTestTransport(t, f.URL, Options{})
	m := testMessage(composed("s", "b"), "a@example.org")
	res := tr.Deliver(context.Background(), m)
	if res.Errs[0] == nil || relay.IsPermanent(res.Errs[0]) {
		t.Fatalf("first attempt: want a temporary error, got %v", res.Errs[0])
	}
	if len(f.requests()) != 1 {
		t.Fatalf("the SDK retried by itself: %d requests", len(f.requests()))
	}
	res = tr.Deliver(context.Background(), m)
	if res.Errs[0] != nil || res.Reply != "0102018f-fake-000002" {
		t.Fatalf("second attempt: %+v", res)
	}
}

// TestDeliverTooBig refuses a message over MaxMessageBytes without calling SES, both when the spool
// knows the size and when only reading the body reveals it.
func TestDeliverTooBig(t *testing.T) {
	f := newFakeSES(t)
	tr := newTestTransport(t, f.URL, Options{})

	m := testMessage("x", "a@example.org")
	m.Size = MaxMessageBytes + 1
	checkTooBig(t, tr.Deliver(context.Background(), m))

	m = testMessage("", "a@example.org")
	m.Size = 0 // unknown: the read must stop one byte past the limit
	m.Open = func() (io.ReadCloser, error) {
		return io.NopCloser(io.LimitReader(zeros{}, MaxMessageBytes+1000)), nil
	}
	checkTooBig(t, tr.Deliver(context.Background(), m))
	if n := len(f.requests()); n != 0 {
		t.Fatalf("SES was called %d times for an oversized message", n)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func checkTooBig(t *testing.T, res relay.Result) {
	t.Helper()
	re, ok := relay.AsError(res.Errs[0])
	if !ok || re.Code != 552 || re.Enhanced != relay.CodeTooBig || re.Reason != ReasonSize {
		t.Fatalf("want 552 5.3.4 size, got %v", res.Errs[0])
	}
}

// TestMaxMessageBytesIsConservative pins the decision: 40 MB read as 10^6 bytes, below 40 MiB.
func TestMaxMessageBytesIsConservative(t *testing.T) {
	if MaxMessageBytes != 40_000_000 || MaxMessageBytes >= 40<<20 {
		t.Fatalf("MaxMessageBytes = %d", MaxMessageBytes)
	}
}

// TestSpoolReadFailureIsTemporary: a spool read error must never bounce.
func TestSpoolReadFailureIsTemporary(t *testing.T) {
	f := newFakeSES(t)
	tr := newTestTransport(t, f.URL, Options{})
	m := testMessage("x", "a@example.org")
	m.Open = func() (io.ReadCloser, error) { return nil, errors.New("disk gone") }
	res := tr.Deliver(context.Background(), m)
	if res.Errs[0] == nil || relay.IsPermanent(res.Errs[0]) {
		t.Fatalf("want temporary, got %v", res.Errs[0])
	}
}

// TestForceTLS: Check confirms a Force TLS channel's configuration set requires TLS; a set that does
// not (or does not exist) is a Problem, and that channel's mail is deferred rather than sent without
// the TLS guarantee.
func TestForceTLS(t *testing.T) {
	f := newFakeSES(t)
	f.policies["secure"] = "REQUIRE"
	f.policies["lax"] = "OPTIONAL"
	f.policies["default"] = ""
	f.account = `{"SendQuota":{"Max24HourSend":50000,"MaxSendRate":14,"SentLast24Hours":12},"SendingEnabled":true,"ProductionAccessEnabled":true,"EnforcementStatus":"HEALTHY"}`
	var logs bytes.Buffer
	tr := newTestTransport(t, f.URL, Options{
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Channels: map[string]Channel{
			"Secure":  {ConfigurationSet: "secure", ForceTLS: true},
			"Lax":     {ConfigurationSet: "lax", ForceTLS: true},
			"Default": {ConfigurationSet: "default", ForceTLS: true},
			"Missing": {ConfigurationSet: "missing", ForceTLS: true},
			"Plain":   {ConfigurationSet: "lax"},
		},
	})
	probs := tr.Check(context.Background())
	got := map[string]string{}
	for _, p := range probs {
		got[p.Channel] = p.Msg
	}
	if len(probs) != 3 || got["Lax"] == "" || got["Default"] == "" || got["Missing"] == "" {
		t.Fatalf("problems %v", probs)
	}
	if !strings.Contains(got["Lax"], "OPTIONAL") || !strings.Contains(got["Missing"], "does not exist") {
		t.Errorf("problem texts: %v", got)
	}
	if len(tr.Problems()) != 3 {
		t.Errorf("Problems() = %v", tr.Problems())
	}
	if !strings.Contains(logs.String(), "max_send_rate=14") || !strings.Contains(logs.String(), "max_24h_send=50000") {
		t.Errorf("send quota not logged:\n%s", logs.String())
	}

	send := func(channel string) error {
		m := testMessage(composed("s", "b"), "a@example.org")
		m.Channel = channel
		return tr.Deliver(context.Background(), m).Errs[0]
	}
	before := len(f.requests())
	for _, ch := range []string{"Lax", "Default", "Missing"} {
		err := send(ch)
		re, ok := relay.AsError(err)
		if !ok || re.Code != 451 || re.Enhanced != "4.7.10" || re.Reason != "tls_policy" {
			t.Errorf("%s: want 451 4.7.10 tls_policy, got %v", ch, err)
		}
	}
	if len(f.requests()) != before {
		t.Fatal("a Force TLS message was sent through a configuration set that does not require TLS")
	}
	if err := send("Secure"); err != nil {
		t.Errorf("Secure: %v", err)
	}
	if err := send("Plain"); err != nil {
		t.Errorf("Plain: %v", err)
	}
}

// TestValidateChannel: Force TLS on SES needs a configuration set.
func TestValidateChannel(t *testing.T) {
	if err := ValidateChannel("c", Channel{ForceTLS: true}); err == nil {
		t.Error("Force TLS without a configuration set accepted")
	}
	if err := ValidateChannel("c", Channel{ForceTLS: true, ConfigurationSet: "s"}); err != nil {
		t.Error(err)
	}
	if _, err := New(context.Background(), Options{Client: &failingAPI{}, Channels: map[string]Channel{"c": {ForceTLS: true}}}); err == nil {
		t.Error("New accepted a Force TLS channel without a configuration set")
	}
}

// TestForceTLSFailsClosed: SES unreachable at start leaves a Force TLS channel's policy unconfirmed;
// that is a Problem (/readyz fails) and its mail waits as a setup fault without reaching SES. Watch
// confirms REQUIRE once SES answers (the mail goes), and notices a later change to OPTIONAL (it waits
// again) — without a reload.
func TestForceTLSFailsClosed(t *testing.T) {
	f := newFakeSES(t)
	f.policies["s"] = "UNAVAILABLE"
	tr := newTestTransport(t, f.URL, Options{Channels: map[string]Channel{"S": {ConfigurationSet: "s", ForceTLS: true}}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if p := tr.Check(ctx); len(p) != 1 || p[0].Reason != "tls_policy" {
		t.Fatalf("problems %v, want the unconfirmed TLS policy", p)
	}
	send := func() error {
		m := testMessage(composed("s", "b"), "a@example.org")
		m.Channel, m.ForceTLS = "S", true
		return tr.Deliver(ctx, m).Errs[0]
	}
	if err := send(); relay.Classify(err) != relay.FaultSetup || len(f.sends) != 0 {
		t.Fatalf("Force TLS mail with an unconfirmed policy: %v (fault %s), %d sent", err, relay.Classify(err), len(f.sends))
	}

	watch, stop := context.WithCancel(ctx)
	defer stop()
	go tr.Watch(watch, 20*time.Millisecond)
	f.mu.Lock()
	f.policies["s"] = "REQUIRE"
	f.mu.Unlock()
	waitFor(t, func() bool { return len(tr.Problems()) == 0 })
	if err := send(); err != nil {
		t.Fatalf("after SES confirmed REQUIRE: %v", err)
	}
	f.mu.Lock()
	f.policies["s"] = "OPTIONAL"
	f.mu.Unlock()
	waitFor(t, func() bool { return len(tr.Problems()) == 1 })
	sent := len(f.sends)
	if err := send(); relay.Classify(err) != relay.FaultSetup || len(f.sends) != sent {
		t.Fatalf("after the policy became OPTIONAL: %v (fault %s)", err, relay.Classify(err))
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// failingAPI is a fake for the constructor test; it is never called.
type failingAPI struct{ API }

// TestBucketReserve checks the shared token bucket's pacing without sleeping: reservations beyond the
// rate are told to wait exactly as long as the debt takes to repay.
func TestBucketReserve(t *testing.T) {
	b := newBucket(10) // 10 a second, burst 10
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 10 {
		if d := b.reserve(t0, 1); d != 0 {
			t.Fatalf("call %d within the burst waits %v", i, d)
		}
	}
	if d := b.reserve(t0, 1); d != 100*time.Millisecond {
		t.Fatalf("11th call waits %v, want 100ms", d)
	}
	if d := b.reserve(t0, 50); d != 5100*time.Millisecond {
		t.Fatalf("a 50-recipient batch waits %v, want 5.1s", d)
	}
	// After the debt is repaid and a full second more passes, the bucket is full again, not fuller.
	t1 := t0.Add(5100*time.Millisecond + 10*time.Second)
	for i := range 10 {
		if d := b.reserve(t1, 1); d != 0 {
			t.Fatalf("after refill, call %d waits %v", i, d)
		}
	}
	if d := b.reserve(t1, 1); d == 0 {
		t.Fatal("burst above one second's worth")
	}
	b.cancel(1)
	if d := b.reserve(t1, 1); d != 100*time.Millisecond {
		t.Fatalf("after cancel, wait %v", d)
	}
}

// TestRateLimitHonoursContext: a worker waiting for the bucket gives up with a temporary error when its
// context ends.
func TestRateLimitHonoursContext(t *testing.T) {
	f := newFakeSES(t)
	tr := newTestTransport(t, f.URL, Options{MaxSendRate: 0.001}) // one message per ~17 minutes
	if err := tr.Deliver(context.Background(), testMessage(composed("s", "b"), "a@example.org")).Errs[0]; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := tr.Deliver(ctx, testMessage(composed("s", "b"), "a@example.org")).Errs[0]
	if re, ok := relay.AsError(err); !ok || re.Reason != "rate_limit" || relay.IsPermanent(err) {
		t.Fatalf("want temporary rate_limit, got %v", err)
	}
	if len(f.requests()) != 1 {
		t.Fatalf("%d sends, want 1", len(f.requests()))
	}
}

func TestDiagnostic(t *testing.T) {
	d := diagnostic("MessageRejectedException", "bad\r\nthing")
	if d != "SES MessageRejected: bad  thing" {
		t.Errorf("%q", d)
	}
	if d := diagnostic("X", strings.Repeat("é", 400)); len(d) > maxDiagnostic+3 {
		t.Errorf("not bounded: %d", len(d))
	}
}

// TestConcurrentWorkers: queue workers share one Transport (bucket, alerts, policies); run under -race.
func TestConcurrentWorkers(t *testing.T) {
	f := newFakeSES(t)
	f.answer = func(n int, _ sendRequest) sesAnswer {
		if n%7 == 0 {
			return sesAnswer{Status: 400, ErrorType: "SendingPausedException", Message: "paused"}
		}
		return sesAnswer{}
	}
	tr := newTestTransport(t, f.URL, Options{MaxSendRate: 1e6})
	const workers, each = 8, 25
	errs := make(chan error, workers*each)
	done := make(chan struct{})
	for w := range workers {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range each {
				m := testMessage(composed("s", "b"), "a@example.org")
				m.QueueID = fmt.Sprintf("q%d-%d", w, i)
				errs <- tr.Deliver(context.Background(), m).Errs[0]
				_ = tr.Problems()
			}
		}()
	}
	for range workers {
		<-done
	}
	close(errs)
	failed := 0
	for err := range errs {
		if err != nil {
			failed++
		}
	}
	if len(f.requests()) != workers*each || failed != workers*each/7 {
		t.Fatalf("%d requests, %d failed", len(f.requests()), failed)
	}
}

// TestFleetSendRate: two instances (Transports, each with its own connection to one PostgreSQL store)
// share the account's send rate (2 a second). After the first spends the bucket's second of burst, the
// second must wait half a second for its message — with a context of 300 ms it gives up, temporarily,
// without sending — where a per-process bucket would have sent at once.
func TestFleetSendRate(t *testing.T) {
	f := newFakeSES(t)
	dsn := peertest.PostgresSchema(t)
	instance := func() *Transport {
		st, err := store.OpenPostgres(context.Background(), dsn, store.PostgresOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return newTestTransport(t, f.URL, Options{MaxSendRate: 2, SendRate: st})
	}
	a, b := instance(), instance()
	rcpts := []string{"r1@example.org", "r2@example.org"}
	for i, err := range a.Deliver(context.Background(), testMessage(composed("s", "b"), rcpts...)).Errs {
		if err != nil {
			t.Fatalf("recipient %d within the burst: %v", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := b.Deliver(ctx, testMessage(composed("s", "b"), "other@example.org")).Errs[0]
	if re, ok := relay.AsError(err); !ok || re.Reason != "rate_limit" || relay.IsPermanent(err) {
		t.Fatalf("the other instance's send over the fleet's rate: %v, want a temporary rate_limit", err)
	}
	if n := len(f.requests()); n != 1 {
		t.Fatalf("%d sends, want only the first instance's", n)
	}
	// The abandoned wait gave its token back: the next send waits only for its own token.
	if err := b.Deliver(context.Background(), testMessage(composed("s", "b"), "other@example.org")).Errs[0]; err != nil {
		t.Fatal(err)
	}
}
