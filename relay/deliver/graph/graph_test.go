package graph_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/auth/oauth"
	"github.com/mailgate/mailgate/kms"
	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/graph"
	"github.com/mailgate/mailgate/relay/peertest"
)

const mailbox = "box@contoso.example"

// env is one test's Microsoft: the Entra-like token endpoint (oauth2-mock-server) and the fake Graph.
type env struct {
	mock  *peertest.OAuthMock
	graph *peertest.GraphFake
}

// The mock grants application permissions per client: "graph-app" has Graph's Mail.Send, "no-role-app"
// has nothing, "smtp-app" has SMTP.SendAsApp on Exchange Online only.
func newEnv(t *testing.T) *env {
	mock := peertest.EntraMock(t, map[string][]string{
		"graph-app https://graph.microsoft.com":      {"Mail.Send"},
		"smtp-app https://outlook.office365.com":     {"SMTP.SendAsApp"},
		"no-role-app https://graph.microsoft.com":    {},
		"delegated-app https://graph.microsoft.com/": {},
	})
	return &env{mock: mock, graph: peertest.NewGraphFake(t, mock.URL+"/jwks", mock.Issuer)}
}

// tokens is a real auth/oauth Source (client credentials) against the mock.
func (e *env) tokens(t *testing.T, clientID string, api oauth.API) *oauth.Source {
	src, err := oauth.New(oauth.Options{Server: "graph-test", ClientID: clientID, ClientSecret: kms.NewSecret("app-secret"),
		Mailbox: mailbox, Flow: oauth.ClientCredentials, API: api, TokenURL: e.mock.URL + "/token", AuthURL: e.mock.URL + "/authorize",
		Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func (e *env) transport(t *testing.T, o graph.Options) *graph.Transport {
	if o.Name == "" {
		o.Name = "m365-graph"
	}
	if o.Mailbox == "" {
		o.Mailbox = mailbox
	}
	if o.Tokens == nil {
		o.Tokens = e.tokens(t, "graph-app", oauth.APIGraph)
	}
	o.Endpoint = e.graph.Srv.URL + "/v1.0"
	o.RootCAs = e.graph.Pool()
	o.TempDir = t.TempDir()
	tr, err := graph.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

func message(body []byte, rcpts ...string) *relay.Message {
	return &relay.Message{QueueID: "q1", Channel: "support", MailFrom: "support@contoso.example", Recipients: rcpts,
		Size: int64(len(body)), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }}
}

func smallMIME(subject string) []byte {
	return []byte("From: Support <support@contoso.example>\r\nTo: customer@example.net\r\nSubject: " + subject +
		"\r\nMessage-ID: <t1.123@contoso.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello from mailgate.\r\n")
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// A small message goes whole through sendMail, base64: Graph's copy is the composed MIME byte for
// byte, plus a Bcc for the envelope recipient the header does not name.
func TestSendMailSmall(t *testing.T) {
	e := newEnv(t)
	tr := e.transport(t, graph.Options{})
	msg := smallMIME("Ticket 123456")
	res := tr.Deliver(ctxT(t), message(msg, "customer@example.net", "hidden@example.org"))
	for i, err := range res.Errs {
		if err != nil {
			t.Fatalf("recipient %d: %v", i, err)
		}
	}
	if !strings.HasPrefix(res.Reply, "202 Accepted") || !strings.Contains(res.Reply, "request-id sent-1") {
		t.Fatalf("reply %q", res.Reply)
	}
	if len(e.graph.Sent) != 1 {
		t.Fatalf("sendMail calls %d", len(e.graph.Sent))
	}
	got := e.graph.Sent[0]
	if !bytes.HasSuffix(got, msg) || !bytes.HasPrefix(got, []byte("Bcc: <hidden@example.org>\r\n")) {
		t.Fatalf("Graph got:\n%s", got)
	}
	out := pythonEmail(t, got, `print(m["Subject"]); print(m["Bcc"]); print(m.get_content().strip())`)
	if out != "Ticket 123456\nhidden@example.org\nHello from mailgate.\n" {
		t.Fatalf("python email read:\n%s", out)
	}
}

// A 20 MB message cannot go in one 4 MB request: the attachments leave the MIME, a draft is made of
// the rest, the 15 MB file goes through an upload session in ≤ 4 MB PUTs without the bearer token,
// the small one is posted whole, and the draft is sent. Every byte arrives; no request exceeds 4 MB.
func TestLargeMessageThroughDraftAndUploadSession(t *testing.T) {
	e := newEnv(t)
	tr := e.transport(t, graph.Options{})
	big := make([]byte, 15<<20)
	// Just under 3 MiB: posted whole, its base64 and JSON would exceed the 4 MiB request limit.
	small := make([]byte, 3_145_700)
	rand.Read(big)
	rand.Read(small)
	msg := largeMIME(big, small)
	if len(msg) < 20<<20 {
		t.Fatalf("test message is only %d bytes", len(msg))
	}
	res := tr.Deliver(ctxT(t), message(msg, "customer@example.net"))
	if res.Errs[0] != nil {
		t.Fatalf("deliver: %v\nsteps %v", res.Errs[0], e.graph.Steps)
	}
	g := e.graph
	if len(g.Sent) != 0 || len(g.SentDrafts) != 1 {
		t.Fatalf("sendMail %d, drafts sent %d", len(g.Sent), len(g.SentDrafts))
	}
	if g.Largest > graph.MaxRequestBytes {
		t.Fatalf("a request carried %d bytes", g.Largest)
	}
	d := g.SentDrafts[0]
	if len(d.Attachments) != 2 {
		t.Fatalf("attachments %d", len(d.Attachments))
	}
	byName := map[string]peertest.GraphAttachment{}
	for _, a := range d.Attachments {
		byName[a.Name] = a
	}
	if a := byName["recording.bin"]; !a.ViaSession || sha256.Sum256(a.Content) != sha256.Sum256(big) || a.ContentType != "application/octet-stream" {
		t.Fatalf("large attachment: session %v, %d bytes, type %q", a.ViaSession, len(a.Content), a.ContentType)
	}
	if a := byName["Logo ü.png"]; !a.ViaSession || !bytes.Equal(a.Content, small) || !a.Inline || a.ContentID != "logo@contoso" {
		t.Fatalf("inline image: %q via session %v, %d bytes", a.Name, a.ViaSession, len(a.Content))
	}
	uploads := 0
	for _, s := range g.Steps {
		if s == "PUT /upload" {
			uploads++
		}
	}
	if uploads < 6 {
		t.Fatalf("15 MB and 3 MB uploaded in %d PUTs: steps %v", uploads, g.Steps)
	}
	out := pythonEmail(t, d.MIME, `
print(m["Subject"])
parts = [p.get_content_type() for p in m.walk()]
print(",".join(parts))
print(m.get_body(("plain",)).get_content().strip())`)
	if out != "Large\nmultipart/mixed,multipart/related,text/html,text/plain\nSee the recording.\n" {
		t.Fatalf("draft MIME as python reads it:\n%s", out)
	}
}

// largeMIME is a composed message with an inline image (RFC 2047 file name) and a 15 MB attachment.
func largeMIME(big, small []byte) []byte {
	var b bytes.Buffer
	b.WriteString("From: Support <support@contoso.example>\r\nTo: customer@example.net\r\nSubject: Large\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n--mix\r\nContent-Type: multipart/related; boundary=\"rel\"\r\n\r\n" +
		"--rel\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>See the recording.</p><img src=\"cid:logo@contoso\">\r\n" +
		"--rel\r\nContent-Type: image/png; name=\"=?utf-8?q?Logo_=C3=BC.png?=\"\r\nContent-ID: <logo@contoso>\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	b.WriteString(wrap76(base64.StdEncoding.EncodeToString(small)))
	b.WriteString("--rel--\r\n\r\n--mix\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the recording.\r\n" +
		"--mix\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"recording.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	b.WriteString(wrap76(base64.StdEncoding.EncodeToString(big)))
	b.WriteString("--mix--\r\n")
	return b.Bytes()
}

func wrap76(s string) string {
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\r\n")
		s = s[76:]
	}
	return b.String() + s + "\r\n"
}

// 429 with Retry-After defers the message (temporary) no earlier than Graph asked; the next attempt
// is sent.
func TestThrottlingHonoursRetryAfter(t *testing.T) {
	e := newEnv(t)
	tr := e.transport(t, graph.Options{})
	e.graph.Throttle, e.graph.RetryAfter = 1, "17"
	res := tr.Deliver(ctxT(t), message(smallMIME("x"), "customer@example.net"))
	re, ok := relay.AsError(res.Errs[0])
	if !ok || relay.Classify(re) != relay.FaultTemporary || re.RetryAfter != 17*time.Second || re.Reason != graph.ReasonThrottled {
		t.Fatalf("throttled: %#v", res.Errs[0])
	}
	e.graph.FailNext = &peertest.GraphFailure{Status: 503, Code: "ServiceUnavailable", Msg: "busy", RetryAfter: "3"}
	res = tr.Deliver(ctxT(t), message(smallMIME("x"), "customer@example.net"))
	if re, _ := relay.AsError(res.Errs[0]); re == nil || re.RetryAfter != 3*time.Second || relay.Classify(re) != relay.FaultTemporary {
		t.Fatalf("503: %v", res.Errs[0])
	}
	res = tr.Deliver(ctxT(t), message(smallMIME("x"), "customer@example.net"))
	if res.Errs[0] != nil || len(e.graph.Sent) != 1 {
		t.Fatalf("after throttling: %v, sent %d", res.Errs[0], len(e.graph.Sent))
	}
}

// Tokens Graph refuses are setup faults with the remedy: an SMTP-audience token (401 twice: the
// transport retries once with a fresh token), and an app without Mail.Send (403 ErrorAccessDenied).
// A mailbox not enabled for REST and an unknown one are setup faults too. None of them bounces.
func TestSetupFaults(t *testing.T) {
	e := newEnv(t)
	cases := []struct {
		name, mailbox, client string
		api                   oauth.API
		reason, remedy        string
	}{
		{"smtp audience", mailbox, "smtp-app", oauth.APISMTP, graph.ReasonAuth, "https://graph.microsoft.com/.default"},
		{"no Mail.Send", mailbox, "no-role-app", oauth.APIGraph, graph.ReasonAccess, "application permission Mail.Send"},
		{"not enabled for REST", "onprem@contoso.example", "graph-app", oauth.APIGraph, graph.ReasonMailbox, "Exchange Online mailbox with a license"},
		{"unknown mailbox", "nobody@contoso.example", "graph-app", oauth.APIGraph, graph.ReasonMailbox, "not found in the tenant"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			toks := &invalidations{TokenSource: e.tokens(t, c.client, c.api)}
			tr := e.transport(t, graph.Options{Mailbox: c.mailbox, Tokens: toks})
			before := len(e.graph.Steps)
			res := tr.Deliver(ctxT(t), message(smallMIME("x"), "customer@example.net"))
			re, ok := relay.AsError(res.Errs[0])
			if !ok || relay.Classify(re) != relay.FaultSetup || re.Reason != c.reason || !strings.Contains(re.Remedy, c.remedy) {
				t.Fatalf("got %v (reason %q remedy %q)", res.Errs[0], re.Reason, re.Remedy)
			}
			if c.reason == graph.ReasonAuth && (len(e.graph.Steps)-before != 2 || toks.n != 1) {
				t.Fatalf("a 401 is retried once with a fresh token: %d requests, %d invalidations", len(e.graph.Steps)-before, toks.n)
			}
		})
	}
}

// Message faults bounce without suppressing; a failure halfway through the large route deletes the
// draft it made.
func TestMessageFaultsAndDraftCleanup(t *testing.T) {
	e := newEnv(t)
	tr := e.transport(t, graph.Options{MaxMessageBytes: 1 << 20})
	res := tr.Deliver(ctxT(t), message(bytes.Repeat([]byte("x"), 2<<20), "customer@example.net"))
	if re, _ := relay.AsError(res.Errs[0]); re == nil || relay.Classify(re) != relay.FaultMessage || re.Enhanced != relay.CodeTooBig {
		t.Fatalf("oversize: %v", res.Errs[0])
	}
	e.graph.FailNext = &peertest.GraphFailure{Status: 400, Code: "ErrorMimeContentInvalid", Msg: "The MIME content is invalid."}
	res = tr.Deliver(ctxT(t), message(smallMIME("x"), "customer@example.net"))
	if re, _ := relay.AsError(res.Errs[0]); re == nil || relay.Classify(re) != relay.FaultMessage || relay.Classify(re).Suppresses() {
		t.Fatalf("MIME refused: %v", res.Errs[0])
	}

	tr = e.transport(t, graph.Options{})
	big := make([]byte, 5<<20)
	rand.Read(big)
	// Requests: the draft, the inline image, the upload session — throttled: the draft is abandoned.
	stepsBefore := len(e.graph.Steps)
	e.graph.FailAt = stepsBefore + 3
	res = tr.Deliver(ctxT(t), message(largeMIME(big, []byte("png")), "customer@example.net"))
	if re, _ := relay.AsError(res.Errs[0]); re == nil || relay.Classify(re) != relay.FaultTemporary {
		t.Fatalf("throttled midway: %v (steps %v)", res.Errs[0], e.graph.Steps[stepsBefore:])
	}
	last := e.graph.Steps[len(e.graph.Steps)-1]
	if last != "DELETE /messages/{id}" {
		t.Fatalf("draft not Deleted: steps %v", e.graph.Steps[stepsBefore:])
	}
	for _, d := range e.graph.Drafts {
		if !d.Deleted {
			t.Fatalf("draft %s left behind", d.ID)
		}
	}
}

// At most MaxConcurrent requests are in flight for a mailbox, however many workers deliver.
func TestConcurrencyPerMailbox(t *testing.T) {
	e := newEnv(t)
	budgets := graph.NewBudgets()
	tr := e.transport(t, graph.Options{Budgets: budgets, MessagesPerMinute: -1})
	// Warm the token so the fake's hold sees only sendMail requests.
	e.graph.Hold = make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 9)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := tr.Deliver(ctxT(t), message(smallMIME(fmt.Sprint(i)), "customer@example.net"))
			errs <- res.Errs[0]
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		e.graph.Mu.Lock()
		n := e.graph.Inflight
		e.graph.Mu.Unlock()
		if n == 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A reload's Transport shares the mailbox's slots: it cannot add a fifth request.
	tr2 := e.transport(t, graph.Options{Budgets: budgets, MessagesPerMinute: -1})
	wg.Add(1)
	go func() {
		defer wg.Done()
		errs <- tr2.Deliver(ctxT(t), message(smallMIME("r"), "customer@example.net")).Errs[0]
	}()
	time.Sleep(200 * time.Millisecond) // give a wrongly admitted request time to show up
	close(e.graph.Hold)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if e.graph.MaxInflight != 4 || len(e.graph.Sent) != 9 {
		t.Fatalf("max in flight %d (want 4), sent %d", e.graph.MaxInflight, len(e.graph.Sent))
	}
}

// The per-minute and per-day budgets defer (temporary, RetryAfter) instead of sending.
func TestBudgets(t *testing.T) {
	e := newEnv(t)
	waits := &countingObserver{}
	tr := e.transport(t, graph.Options{MessagesPerMinute: 2, RecipientsPerDay: 3, MaxShapingWait: time.Millisecond, ShapingWait: waits})
	for i := range 2 {
		if err := tr.Deliver(ctxT(t), message(smallMIME("x"), "a@example.net")).Errs[0]; err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	err := tr.Deliver(ctxT(t), message(smallMIME("x"), "a@example.net")).Errs[0]
	if re, _ := relay.AsError(err); re == nil || re.Reason != graph.ReasonRateLimited || re.RetryAfter < 30*time.Second || relay.Classify(re) != relay.FaultTemporary {
		t.Fatalf("third message in a minute: %v", err)
	}
	// The two sent messages took their budget; the deferred one never got it.
	if n := waits.count(); n != 2 {
		t.Fatalf("shaping waits observed: %d, want 2", n)
	}
	tr = e.transport(t, graph.Options{Name: "other", MessagesPerMinute: -1, RecipientsPerDay: 3})
	res := tr.Deliver(ctxT(t), message(smallMIME("x"), "a@example.net", "b@example.net", "c@example.net", "d@example.net"))
	for _, err := range res.Errs {
		if re, _ := relay.AsError(err); re == nil || re.RetryAfter < time.Hour {
			t.Fatalf("4 recipients over a daily 3: %v", err)
		}
	}
	if n := len(e.graph.Sent); n != 2 {
		t.Fatalf("sent %d", n)
	}
}

// invalidations counts the tokens the transport gave back as refused.
type invalidations struct {
	graph.TokenSource
	n int
}

func (i *invalidations) Invalidate(token string) { i.n++; i.TokenSource.Invalidate(token) }

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func pythonEmail(t *testing.T, msg []byte, code string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.eml")
	if err := os.WriteFile(p, msg, 0o600); err != nil {
		t.Fatal(err)
	}
	script := "import sys, email, email.policy\nm = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)\n" + code
	return peertest.Python(t, script, p)
}

// countingObserver counts graph.Options.ShapingWait observations.
type countingObserver struct {
	mu sync.Mutex
	n  int
}

func (c *countingObserver) Observe(float64) { c.mu.Lock(); c.n++; c.mu.Unlock() }
func (c *countingObserver) count() int      { c.mu.Lock(); defer c.mu.Unlock(); return c.n }
