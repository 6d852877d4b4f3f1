package smtp_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/smtp"
)

// fakeTransport points a Transport at a scripted server, trusting its certificate.
func fakeTransport(t *testing.T, f *fakeUpstream, o smtp.Options) *harness {
	t.Helper()
	o.Host, o.Port = hostPort(t, f.addr())
	o.RootCAs = f.cert.Pool
	return newTransport(t, o)
}

func TestPlainWhenLoginAbsent(t *testing.T) {
	f := startFake(t, &fakeUpstream{authMechs: "PLAIN"})
	h := fakeTransport(t, f, smtp.Options{Auth: smtp.AuthLogin, Username: "u", Password: "p"})
	mustDeliver(t, h.tr, message("a@example.net"))
	if f.stat("AUTH PLAIN") != 1 || f.stat("AUTH LOGIN") != 0 {
		t.Fatalf("AUTH PLAIN %d, LOGIN %d", f.stat("AUTH PLAIN"), f.stat("AUTH LOGIN"))
	}
	f2 := startFake(t, &fakeUpstream{authMechs: "CRAM-MD5"})
	h2 := fakeTransport(t, f2, smtp.Options{Auth: smtp.AuthLogin, Username: "u", Password: "p"})
	res := h2.tr.Deliver(ctxTimeout(t, 10*time.Second), message("a@example.net"))
	if re := setupErr(t, res.Errs[0]); !strings.Contains(re.Msg, "neither AUTH LOGIN nor PLAIN") {
		t.Fatal(re)
	}
}

// Exchange Online with SMTP AUTH disabled for the tenant: deferred, remedy logged, no token churn.
func TestSMTPAuthDisabled5_7_139(t *testing.T) {
	const reply = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."
	t.Run("password", func(t *testing.T) {
		f := startFake(t, &fakeUpstream{replies: map[string]string{"AUTH": reply}})
		h := fakeTransport(t, f, smtp.Options{Auth: smtp.AuthLogin, Username: "box@contoso.example", Password: "Pa55-w0rd-x", Provider: smtp.ProviderMicrosoft})
		res := h.tr.Deliver(ctxTimeout(t, 10*time.Second), message("a@example.net", "b@example.net"))
		for _, err := range res.Errs {
			re := setupErr(t, err)
			if relay.IsPermanent(re) || !strings.Contains(re.Msg, "5.7.139") {
				t.Fatal(re)
			}
		}
		logs := h.logs.String()
		if !strings.Contains(logs, "SmtpClientAuthenticationDisabled $false") || !strings.Contains(logs, `"level":"WARN"`) {
			t.Fatalf("remedy not logged:\n%s", logs)
		}
		assertNoSecret(t, h, "Pa55-w0rd-x")
		if f.stat("MAIL") != 0 {
			t.Fatal("MAIL sent after failed AUTH")
		}
	})
	t.Run("xoauth2", func(t *testing.T) {
		f := startFake(t, &fakeUpstream{replies: map[string]string{"AUTH": reply}})
		toks := &staticTokens{tokens: []string{"tok-a", "tok-b"}}
		h := fakeTransport(t, f, smtp.Options{Auth: smtp.AuthXOAUTH2, Tokens: toks, Mailbox: "box@contoso.example"})
		res := h.tr.Deliver(ctxTimeout(t, 10*time.Second), message("a@example.net"))
		setupErr(t, res.Errs[0])
		if toks.fetched != 1 || len(toks.invalidated) != 0 {
			t.Fatalf("5.7.139 is not a token problem: fetched %d invalidated %v", toks.fetched, toks.invalidated)
		}
	})
	t.Run("xoauth2 json challenge then 535 5.7.3, retried once", func(t *testing.T) {
		challenge := "334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=" // {"status":"401","schemes":"bearer"}
		f := startFake(t, &fakeUpstream{replies: map[string]string{"AUTH": challenge + "|235 2.7.0 Authentication successful"}})
		toks := &staticTokens{tokens: []string{"tok-old", "tok-new"}}
		h := fakeTransport(t, f, smtp.Options{Auth: smtp.AuthXOAUTH2, Tokens: toks, Mailbox: "box@contoso.example"})
		mustDeliver(t, h.tr, message("a@example.net"))
		if toks.fetched != 2 || len(toks.invalidated) != 1 || toks.invalidated[0] != "tok-old" {
			t.Fatalf("fetched %d invalidated %v", toks.fetched, toks.invalidated)
		}
	})
}

func TestConfigRepliesAtMailAreTheRelays(t *testing.T) {
	for _, reply := range []string{
		"530 5.7.57 Client not authenticated to send mail.",
		"550 5.7.60 SMTP; Client does not have permissions to send as this sender",
	} {
		f := startFake(t, &fakeUpstream{replies: map[string]string{"MAIL": reply}})
		h := fakeTransport(t, f, smtp.Options{})
		res := h.tr.Deliver(ctxTimeout(t, 10*time.Second), message("a@example.net"))
		re := setupErr(t, res.Errs[0])
		if relay.IsPermanent(re) || !strings.Contains(re.Msg, reply[:10]) {
			t.Fatal(re)
		}
	}
}

// 554 5.2.0 quota exceeded: deferred with RetryAfter and the server paused — no further connection.
func TestQuotaExceededPausesServer(t *testing.T) {
	f := startFake(t, &fakeUpstream{replies: map[string]string{
		".": "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception",
	}})
	h := fakeTransport(t, f, smtp.Options{Provider: smtp.ProviderMicrosoft, QuotaPause: 2 * time.Hour})
	res := h.tr.Deliver(ctxTimeout(t, 10*time.Second), message("a@example.net", "b@example.net"))
	for _, err := range res.Errs {
		re := relayErr(t, err, 451, smtp.ReasonQuota)
		if relay.IsPermanent(re) || re.RetryAfter < time.Minute || re.RetryAfter > 24*time.Hour {
			t.Fatal(re, re.RetryAfter)
		}
	}
	conns, _ := f.connections()
	res = h.tr.Deliver(ctxTimeout(t, 10*time.Second), message("c@example.net"))
	re := relayErr(t, res.Errs[0], 451, smtp.ReasonQuota)
	if re.RetryAfter <= 0 || !strings.Contains(re.Msg, "paused") {
		t.Fatal(re)
	}
	if after, _ := f.connections(); after != conns || f.stat("MAIL") != 1 {
		t.Fatalf("paused server was contacted: connections %d→%d, MAIL %d", conns, after, f.stat("MAIL"))
	}
	// A 5.2.0 without quota is an ordinary permanent reply.
	f2 := startFake(t, &fakeUpstream{replies: map[string]string{".": "554 5.2.0 STOREDRV.Deliver.Exception:ObjectNotFound"}})
	h2 := fakeTransport(t, f2, smtp.Options{})
	res = h2.tr.Deliver(ctxTimeout(t, 10*time.Second), message("a@example.net"))
	if re := relayErr(t, res.Errs[0], 554, smtp.ReasonUpstream); re.Enhanced != "5.2.0" || !relay.IsPermanent(re) {
		t.Fatal(re)
	}
}

func TestThrottled432(t *testing.T) {
	f := startFake(t, &fakeUpstream{replies: map[string]string{"MAIL": "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded|250 2.1.0 OK"}})
	h := fakeTransport(t, f, smtp.Options{Provider: smtp.ProviderMicrosoft, ThrottleRetryAfter: 90 * time.Second})
	res := h.tr.Deliver(ctxTimeout(t, 10*time.Second), message("a@example.net"))
	re := relayErr(t, res.Errs[0], 432, smtp.ReasonThrottled)
	if re.Enhanced != "4.3.2" || re.RetryAfter != 90*time.Second || relay.IsPermanent(re) {
		t.Fatal(re, re.RetryAfter)
	}
	mustDeliver(t, h.tr, message("b@example.net")) // not paused: the next attempt goes
}

// bigMessage is a generated body of size bytes (never all in memory at once on our side).
func bigMessage(size int, rcpts ...string) *relay.Message {
	line := strings.Repeat("x", 76) + "\r\n"
	m := bodyMessage("", rcpts...)
	m.Size = int64(size)
	m.Open = func() (io.ReadCloser, error) {
		hdr := "Subject: big\r\n\r\n"
		r := io.MultiReader(strings.NewReader(hdr), io.LimitReader(repeatReader(line), int64(size-len(hdr))))
		return io.NopCloser(r), nil
	}
	return m
}

type repeatReader string

func (r repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		n += copy(p[n:], r)
	}
	return n, nil
}

// A server that stops reading in the middle of DATA: the per-block write deadline fires (go-smtp has
// none of its own) and the failure is temporary.
func TestStallMidDataHitsWriteDeadline(t *testing.T) {
	f := startFake(t, &fakeUpstream{stallData: true})
	h := fakeTransport(t, f, smtp.Options{DataTimeout: 300 * time.Millisecond})
	start := time.Now()
	res := h.tr.Deliver(ctxTimeout(t, 60*time.Second), bigMessage(64<<20, "a@example.net"))
	took := time.Since(start)
	re := relayErr(t, res.Errs[0], 451, smtp.ReasonNetwork)
	if relay.IsPermanent(re) || !strings.Contains(re.Msg, "timeout") || took > 20*time.Second {
		t.Fatalf("%v after %v", re, took)
	}
}

func TestStallAfterDotHitsFinalReplyTimeout(t *testing.T) {
	f := startFake(t, &fakeUpstream{stallFinal: true})
	h := fakeTransport(t, f, smtp.Options{FinalReplyTimeout: 300 * time.Millisecond})
	res := h.tr.Deliver(ctxTimeout(t, 30*time.Second), message("a@example.net"))
	relayErr(t, res.Errs[0], 451, smtp.ReasonNetwork)
}

func TestContextEndsAStalledDelivery(t *testing.T) {
	f := startFake(t, &fakeUpstream{stallFinal: true})
	h := fakeTransport(t, f, smtp.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	res := h.tr.Deliver(ctx, message("a@example.net"))
	if err := res.Errs[0]; err == nil || relay.IsPermanent(err) || time.Since(start) > 5*time.Second {
		t.Fatalf("%v after %v", err, time.Since(start))
	}
}

// Concurrency: never more than MaxConnections connections open, however many workers deliver.
func TestConcurrencyLimit(t *testing.T) {
	f := startFake(t, &fakeUpstream{finalDelay: 30 * time.Millisecond})
	h := fakeTransport(t, f, smtp.Options{Provider: smtp.ProviderMicrosoft, MessagesPerMinute: -1})
	var wg sync.WaitGroup
	errs := make(chan error, 24)
	for i := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := h.tr.Deliver(ctxTimeout(t, 30*time.Second), message(fmt.Sprintf("r%d@example.net", i)))
			errs <- res.Errs[0]
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	total, maxOpen := f.connections()
	if maxOpen > 3 || total > 3 || maxOpen < 2 {
		t.Fatalf("connections: total %d, max open at once %d; want ≤ 3 (Microsoft default) and some parallelism", total, maxOpen)
	}
}

// TestBudgetsSurviveReload: a reload builds a new Transport for the same server and mailbox while the
// old one still has attempts in flight. Both share the identity's budget: the recipients-per-day window
// goes on counting where the old Transport stopped, the connection slots and the pool of idle sessions
// hold for both together, and the new Transport reuses the old one's connections (no reconnect storm).
func TestBudgetsSurviveReload(t *testing.T) {
	f := startFake(t, &fakeUpstream{finalDelay: 20 * time.Millisecond})
	budgets := smtp.NewBudgets()
	o := smtp.Options{Provider: smtp.ProviderMicrosoft, MessagesPerMinute: -1, RecipientsPerDay: 30, MaxConnections: 2,
		IdleTimeout: time.Minute,
		Auth:        smtp.AuthLogin, Username: "box@contoso.example", Password: "pw", Budgets: budgets}
	old := fakeTransport(t, f, o)
	deliverMany := func(tr *smtp.Transport, n int, prefix string, errs chan<- error) *sync.WaitGroup {
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- tr.Deliver(ctxTimeout(t, 30*time.Second), message(fmt.Sprintf("%s%d@example.net", prefix, i))).Errs[0]
			}()
		}
		return &wg
	}
	errs := make(chan error, 40)
	deliverMany(old.tr, 10, "before", errs).Wait()

	// The reload: a new Transport for the same identity, the old one retired with work in flight.
	cur := fakeTransport(t, f, o)
	w1 := deliverMany(old.tr, 10, "old", errs)
	w2 := deliverMany(cur.tr, 20, "new", errs)
	w1.Wait()
	w2.Wait()
	close(errs)
	old.tr.Close() // a minute after the reload: the new Transport keeps the sessions it adopted
	f.mu.Lock()
	open := f.open
	f.mu.Unlock()
	if open == 0 {
		t.Error("closing the old Transport closed the idle sessions the new one had adopted")
	}
	var delivered, deferred int
	for err := range errs {
		switch {
		case err == nil:
			delivered++
		case relay.Classify(err) == relay.FaultTemporary && strings.Contains(err.Error(), "recipients-per-day"):
			deferred++
		default:
			t.Fatalf("unexpected failure: %v", err)
		}
	}
	if delivered != 30 || deferred != 10 {
		t.Errorf("delivered %d, deferred by the daily budget %d; want 30 and 10 (one window for both Transports)", delivered, deferred)
	}
	if total, maxOpen := f.connections(); maxOpen > 2 || total > 2 {
		t.Errorf("%d connections opened, %d open at once across the old and new Transport; want ≤ 2 of each", total, maxOpen)
	}
}

// A pooled connection the server has dropped is replaced transparently.
func TestDeadPooledConnectionIsReplaced(t *testing.T) {
	f := startFake(t, &fakeUpstream{closeAfterTx: true})
	h := fakeTransport(t, f, smtp.Options{})
	mustDeliver(t, h.tr, message("a@example.net"))
	time.Sleep(50 * time.Millisecond)
	mustDeliver(t, h.tr, message("b@example.net"))
	if total, _ := f.connections(); total != 2 {
		t.Fatalf("connections %d, want 2", total)
	}
}

func TestUnreadableBodyIsNeverTruncated(t *testing.T) {
	f := startFake(t, &fakeUpstream{})
	h := fakeTransport(t, f, smtp.Options{})
	m := message("a@example.net")
	m.Open = func() (io.ReadCloser, error) {
		return io.NopCloser(io.MultiReader(strings.NewReader("Subject: x\r\n\r\npart"), errReader{})), nil
	}
	res := h.tr.Deliver(ctxTimeout(t, 10*time.Second), m)
	relayErr(t, res.Errs[0], 451, smtp.ReasonLocal)
	time.Sleep(50 * time.Millisecond)
	if f.stat(".") != 0 {
		t.Fatal("a truncated message was completed with the final dot")
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, fmt.Errorf("disk read error") }

func TestNewRejectsBadOptions(t *testing.T) {
	for _, o := range []smtp.Options{
		{},
		{Host: "h", TLS: "ssl"},
		{Host: "h", Auth: "cram"},
		{Host: "h", Auth: smtp.AuthLogin},
		{Host: "h", Auth: smtp.AuthXOAUTH2, Mailbox: "m"},
		{Host: "h", Provider: "google"},
	} {
		if _, err := smtp.New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

// Exchange Online's account replies each carry a precise remedy on the error (for the queue's alert
// and /readyz) and are deferred as setup faults: basic auth off (5.7.30), the tenant's external
// recipient limit after the dot (5.7.233), and a token Exchange refuses (5.7.3, e.g. one issued for
// Graph).
func TestExchangeRemedies(t *testing.T) {
	cases := []struct {
		name    string
		replies map[string]string
		opts    smtp.Options
		remedy  string
	}{
		{"5.7.30 basic auth", map[string]string{"AUTH": "535 5.7.30 Basic authentication is not supported for Client Submission."},
			smtp.Options{Auth: smtp.AuthLogin, Username: "box@contoso.example", Password: "pw-123456"}, "auth: microsoft-oauth"},
		{"5.7.233 tenant limit", map[string]string{".": "550 5.7.233 Your message can't be sent because your organization has exceeded the external recipient rate limit."},
			smtp.Options{}, "external recipient rate limit"},
		{"5.7.3 graph token", map[string]string{"AUTH": "535 5.7.3 Authentication unsuccessful"},
			smtp.Options{Auth: smtp.AuthXOAUTH2, Tokens: &staticTokens{tokens: []string{"graph-token-1", "graph-token-2"}}, Mailbox: "box@contoso.example"},
			"a Microsoft Graph token (Mail.Send, audience https://graph.microsoft.com) is refused on SMTP"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := startFake(t, &fakeUpstream{replies: c.replies})
			h := fakeTransport(t, f, c.opts)
			res := h.tr.Deliver(ctxTimeout(t, 10*time.Second), message("a@example.net"))
			re, ok := relay.AsError(res.Errs[0])
			if !ok || relay.Classify(re) != relay.FaultSetup {
				t.Fatalf("%v: want a setup fault", res.Errs[0])
			}
			if !strings.Contains(re.Remedy, c.remedy) {
				t.Fatalf("remedy %q, want it to say %q", re.Remedy, c.remedy)
			}
		})
	}
}
