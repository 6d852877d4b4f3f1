package events

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/metrics"
	sqlitestore "github.com/mailgate/mailgate/relay/store"
)

const (
	topic   = "arn:aws:sns:eu-west-1:111122223333:mailgate-ses-events"
	certURL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem"
)

// pki is a test CA and an SNS-like signing certificate it issued, generated per test run.
type pki struct {
	caKey   *rsa.PrivateKey
	ca      *x509.Certificate
	key     *rsa.PrivateKey
	certPEM []byte
	roots   *x509.CertPool
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	now := time.Now()
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mailgate test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	p := &pki{caKey: caKey, ca: ca, roots: x509.NewCertPool()}
	p.roots.AddCert(ca)
	p.key, p.certPEM = p.issue(t, now.Add(-time.Hour), now.Add(24*time.Hour))
	return p
}

// issue makes a signing certificate valid from nb to na, signed by the test CA.
func (p *pki) issue(t testing.TB, nb, na time.Time) (*rsa.PrivateKey, []byte) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "sns.amazonaws.com"},
		NotBefore: nb, NotAfter: na, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// fetcher serves certificates and SubscribeURLs from memory and records every URL asked for.
type fetcher struct {
	mu    sync.Mutex
	files map[string][]byte
	calls []string
}

func (f *fetcher) Fetch(_ context.Context, u string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, u)
	if b, ok := f.files[u]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("404 %s", u)
}

func (f *fetcher) called() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// store fakes relay/store's RecordNotification with its contract: the claim and the records commit
// together or not at all. (TestWithSQLiteStore runs the handler on the real store.)
type store struct {
	mu         sync.Mutex
	bounces    []relay.Bounce
	suppressed map[string]string
	processed  map[string]bool
	failNext   bool
	pruned     []time.Time
}

func newStore() *store { return &store{suppressed: map[string]string{}, processed: map[string]bool{}} }

func (s *store) RecordNotification(_ context.Context, id string, bs []relay.Bounce) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failNext {
		s.failNext = false
		return false, errors.New("database is locked")
	}
	if s.processed[id] {
		return false, nil
	}
	s.processed[id] = true
	for _, b := range bs {
		s.bounces = append(s.bounces, b)
		if b.Suppressed {
			s.suppressed[b.Address] = b.Diagnostic + " (" + b.Reason + ")"
		}
	}
	return true, nil
}

func (s *store) PruneProcessed(_ context.Context, before time.Time) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruned = append(s.pruned, before)
	return 0, nil
}

func (s *store) snapshot() ([]relay.Bounce, map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sup := map[string]string{}
	for k, v := range s.suppressed {
		sup[k] = v
	}
	return append([]relay.Bounce(nil), s.bounces...), sup
}

type harness struct {
	pki     *pki
	fetch   *fetcher
	store   *store
	metrics *metrics.Metrics
	h       *Handler
	logs    *bytes.Buffer
}

func newHarness(t testing.TB) *harness {
	t.Helper()
	p := newPKI(t)
	x := &harness{
		pki:     p,
		fetch:   &fetcher{files: map[string][]byte{certURL: p.certPEM}},
		store:   newStore(),
		metrics: metrics.New(prometheus.NewRegistry()),
		logs:    &bytes.Buffer{},
	}
	h, err := New(Options{
		Store:     x.store,
		TopicARNs: []string{topic},
		Fetcher:   x.fetch,
		Roots:     p.roots,
		Channels:  map[string]string{"sales-events": "Sales"},
		Logger:    slog.New(slog.NewTextHandler(&lockedWriter{w: x.logs}, nil)),
		Metrics:   x.metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	x.h = h
	return x
}

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// sign fills in SignatureVersion, SigningCertURL and Signature as SNS does.
func sign(t testing.TB, e *Envelope, version string, key *rsa.PrivateKey, url string) {
	t.Helper()
	e.SignatureVersion, e.SigningCertURL = version, url
	text, err := e.StringToSign()
	if err != nil {
		t.Fatal(err)
	}
	var sig []byte
	if version == "1" {
		d := sha1.Sum([]byte(text))
		sig, err = rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA1, d[:])
	} else {
		d := sha256.Sum256([]byte(text))
		sig, err = rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, d[:])
	}
	if err != nil {
		t.Fatal(err)
	}
	e.Signature = base64.StdEncoding.EncodeToString(sig)
}

func notification(snsID, message string) *Envelope {
	return &Envelope{
		Type: TypeNotification, MessageID: snsID, TopicArn: topic, Message: message,
		Timestamp:      "2026-11-27T05:00:01.000Z",
		UnsubscribeURL: "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
	}
}

func (x *harness) post(t testing.TB, e *Envelope) *httptest.ResponseRecorder {
	t.Helper()
	b, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return x.postRaw(b, e.Type)
}

func (x *harness) postRaw(body []byte, typ string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/ses/events", bytes.NewReader(body))
	req.Header.Set("Content-Type", "text/plain; charset=UTF-8")
	if typ != "" {
		req.Header.Set("x-amz-sns-message-type", typ)
	}
	rec := httptest.NewRecorder()
	x.h.ServeHTTP(rec, req)
	return rec
}

func (x *harness) count(typ, result string) float64 {
	return testutil.ToFloat64(x.metrics.SESEvents.WithLabelValues(typ, result))
}

// bounceEvent is an SES Permanent bounce in the identity-notification shape (shape "notificationType")
// or the configuration-set event shape ("eventType").
func bounceEvent(shape, kind, bounceType, feedbackID, addr string) string {
	return fmt.Sprintf(`{%q:%q,"bounce":{"feedbackId":%q,"bounceType":%q,"bounceSubType":"General",
"bouncedRecipients":[{"emailAddress":%q,"action":"failed","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 <%s>: Recipient address rejected: User unknown"}],
"timestamp":"2026-11-27T05:00:00.250Z","reportingMTA":"dsn; a1-2.smtp-out.eu-west-1.amazonses.com"},
"mail":{"timestamp":"2026-11-27T04:59:59.000Z","source":"bounces@mail.example.com","messageId":"0102018f-fake-000001",
"destination":[%q],"headersTruncated":false,"headers":[{"name":"Message-ID","value":"<ticket-123456.abc@example.com>"}],
"commonHeaders":{"messageId":"<ticket-123456.abc@example.com>","subject":"Your ticket 123456"},
"tags":{"ses:configuration-set":["support-events"],"mailgate-queue-id":["q0001"],"mailgate-channel":["Support"]}}}`,
		shape, kind, feedbackID, bounceType, addr, addr, addr)
}

// TestBouncePermanentV1AndV2: validly signed notifications, SignatureVersion 1 and 2, are accepted and
// each permanent bounce becomes a bounce record with the remote MTA's codes.
func TestBouncePermanentV1AndV2(t *testing.T) {
	x := newHarness(t)
	for i, v := range []string{"1", "2"} {
		addr := fmt.Sprintf("gone%d@example.org", i)
		e := notification(fmt.Sprintf("sns-%d", i), bounceEvent("notificationType", "Bounce", "Permanent", "fb-"+v, addr))
		sign(t, e, v, x.pki.key, certURL)
		if rec := x.post(t, e); rec.Code != http.StatusOK {
			t.Fatalf("v%s: %d %s\n%s", v, rec.Code, rec.Body, x.logs)
		}
	}
	bounces, _ := x.store.snapshot()
	if len(bounces) != 2 {
		t.Fatalf("%d bounces", len(bounces))
	}
	b := bounces[0]
	want := relay.Bounce{
		Address: "gone0@example.org", Channel: "Support", Time: time.Date(2026, 11, 27, 5, 0, 0, 250e6, time.UTC),
		Code: 550, Enhanced: "5.1.1", Diagnostic: "smtp; 550 5.1.1 <gone0@example.org>: Recipient address rejected: User unknown",
		MessageID: "ticket-123456.abc@example.com", QueueID: "q0001", Reason: "ses_bounce", Fault: relay.FaultAddress, Suppressed: true,
	}
	if !b.Time.Equal(want.Time) {
		t.Errorf("time %v", b.Time)
	}
	b.Time = want.Time
	if b != want {
		t.Errorf("bounce\n got %+v\nwant %+v", b, want)
	}
	if n := x.count("bounce", "recorded"); n != 2 {
		t.Errorf("recorded count %v", n)
	}
	if n := testutil.ToFloat64(x.metrics.Bounces.WithLabelValues("ses_bounce")); n != 2 {
		t.Errorf("bounces metric %v", n)
	}
	// The signing certificate was fetched once and then served from the cache.
	if calls := x.fetch.called(); len(calls) != 1 || calls[0] != certURL {
		t.Errorf("fetches %v", calls)
	}
}

// TestBounceRecordedOnce: SNS delivers at least once; the same bounce — redelivered, or published
// again through a configuration-set event destination with another SNS MessageId — is recorded once.
func TestBounceRecordedOnce(t *testing.T) {
	x := newHarness(t)
	e := notification("sns-1", bounceEvent("notificationType", "Bounce", "Permanent", "fb-1", "gone@example.org"))
	sign(t, e, "2", x.pki.key, certURL)
	for range 2 {
		if rec := x.post(t, e); rec.Code != http.StatusOK {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
	}
	e2 := notification("sns-2", bounceEvent("eventType", "Bounce", "Permanent", "fb-1", "gone@example.org"))
	sign(t, e2, "1", x.pki.key, certURL)
	if rec := x.post(t, e2); rec.Code != http.StatusOK {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	bounces, _ := x.store.snapshot()
	if len(bounces) != 1 {
		t.Fatalf("%d bounce records, want 1", len(bounces))
	}
	if n := x.count("bounce", "duplicate"); n != 2 {
		t.Errorf("duplicates counted %v", n)
	}
}

// TestConfigurationSetShape: an eventType bounce without mailgate's tags names its channel through the
// configuration set.
func TestConfigurationSetShape(t *testing.T) {
	x := newHarness(t)
	msg := strings.NewReplacer(`"mailgate-queue-id":["q0001"],"mailgate-channel":["Support"]`, `"x":["y"]`,
		`"support-events"`, `"sales-events"`).Replace(bounceEvent("eventType", "Bounce", "Permanent", "fb-9", "gone@example.org"))
	e := notification("sns-9", msg)
	sign(t, e, "2", x.pki.key, certURL)
	if rec := x.post(t, e); rec.Code != http.StatusOK {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	bounces, _ := x.store.snapshot()
	if len(bounces) != 1 || bounces[0].Channel != "Sales" || bounces[0].QueueID != "" {
		t.Fatalf("bounces %+v", bounces)
	}
}

// TestComplaintSuppressed: a complaint puts the address on the suppression list, once.
func TestComplaintSuppressed(t *testing.T) {
	x := newHarness(t)
	msg := `{"notificationType":"Complaint","complaint":{"feedbackId":"cfb-1","complaintFeedbackType":"abuse",
"complainedRecipients":[{"emailAddress":"angry@example.org"}],"timestamp":"2026-11-27T05:10:00.000Z"},
"mail":{"messageId":"0102018f-fake-000002","commonHeaders":{"messageId":"<m2@example.com>"},"tags":{"mailgate-channel":["Support"]}}}`
	e := notification("sns-c", msg)
	sign(t, e, "2", x.pki.key, certURL)
	for range 2 {
		if rec := x.post(t, e); rec.Code != http.StatusOK {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
	}
	bounces, sup := x.store.snapshot()
	if len(bounces) != 1 || bounces[0].Reason != "ses_complaint" || bounces[0].Fault != relay.FaultAddress || !bounces[0].Suppressed {
		t.Errorf("a complaint is recorded once as a suppressing address fault: %+v", bounces)
	}
	if sup["angry@example.org"] != "SES complaint: abuse (ses_complaint)" {
		t.Errorf("suppression %v", sup)
	}
	if x.count("complaint", "recorded") != 1 || x.count("complaint", "duplicate") != 1 {
		t.Errorf("counts recorded=%v duplicate=%v", x.count("complaint", "recorded"), x.count("complaint", "duplicate"))
	}
}

// TestLoggedOnly: transient bounces, delivery delays and other SES events change nothing.
func TestLoggedOnly(t *testing.T) {
	x := newHarness(t)
	delay := `{"eventType":"DeliveryDelay","deliveryDelay":{"delayType":"TransientCommunicationFailure","expirationTime":"2026-11-28T05:00:00.000Z",
"delayedRecipients":[{"emailAddress":"slow@example.org","status":"4.4.1","diagnosticCode":"smtp; 421 4.4.1 try later"}],"timestamp":"2026-11-27T05:00:00.000Z"},
"mail":{"messageId":"0102018f-fake-000003"}}`
	msgs := map[string]string{
		"transient": bounceEvent("notificationType", "Bounce", "Transient", "fb-t", "full@example.org"),
		"delay":     delay,
		"delivery":  `{"eventType":"Delivery","delivery":{"recipients":["ok@example.org"]},"mail":{"messageId":"x"}}`,
		"not-ses":   `hello, this is not JSON`,
	}
	i := 0
	for name, m := range msgs {
		i++
		e := notification(fmt.Sprintf("sns-l%d", i), m)
		sign(t, e, "2", x.pki.key, certURL)
		if rec := x.post(t, e); rec.Code != http.StatusOK {
			t.Fatalf("%s: %d %s", name, rec.Code, rec.Body)
		}
	}
	bounces, sup := x.store.snapshot()
	if len(bounces) != 0 || len(sup) != 0 {
		t.Fatalf("logged-only events changed the store: %v %v", bounces, sup)
	}
	if x.count("bounce", "logged") != 1 || x.count("delivery_delay", "logged") != 1 || x.count("other", "ignored") != 2 {
		t.Errorf("counts: %v %v %v", x.count("bounce", "logged"), x.count("delivery_delay", "logged"), x.count("other", "ignored"))
	}
	logs := x.logs.String()
	if !strings.Contains(logs, "ses delivery delayed") || !strings.Contains(logs, "ses transient bounce") {
		t.Errorf("logs:\n%s", logs)
	}
}

// TestStoreFailureRedelivered: when the store fails, SNS gets a 500, nothing is claimed, and the
// redelivery records the bounce.
func TestStoreFailureRedelivered(t *testing.T) {
	x := newHarness(t)
	x.store.failNext = true
	e := notification("sns-f", bounceEvent("notificationType", "Bounce", "Permanent", "fb-f", "gone@example.org"))
	sign(t, e, "2", x.pki.key, certURL)
	if rec := x.post(t, e); rec.Code != http.StatusInternalServerError {
		t.Fatalf("want 500, got %d", rec.Code)
	}
	if rec := x.post(t, e); rec.Code != http.StatusOK {
		t.Fatalf("redelivery: %d", rec.Code)
	}
	bounces, _ := x.store.snapshot()
	if len(bounces) != 1 {
		t.Fatalf("bounces %d", len(bounces))
	}
}

// TestWithSQLiteStore runs the handler on the real store: a signed permanent bounce suppresses the
// address, its duplicate changes nothing, and Run prunes old claims.
func TestWithSQLiteStore(t *testing.T) {
	x := newHarness(t)
	st, err := sqlitestore.Open(filepath.Join(t.TempDir(), "mailgate.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	x.h.opts.Store = st
	e := notification("sns-real", bounceEvent("notificationType", "Bounce", "Permanent", "fb-real", "gone@example.org"))
	sign(t, e, "2", x.pki.key, certURL)
	for range 2 {
		if rec := x.post(t, e); rec.Code != http.StatusOK {
			t.Fatalf("%d %s", rec.Code, rec.Body)
		}
	}
	ctx := context.Background()
	bs, err := st.Bounces(ctx, sqlitestore.BounceFilter{Address: "gone@example.org"})
	if err != nil || len(bs) != 1 || !bs[0].Suppressed || bs[0].Reason != "ses_bounce" {
		t.Fatalf("bounces %+v %v", bs, err)
	}
	if _, ok, _ := st.Suppressed(ctx, "GONE@example.org"); !ok {
		t.Fatal("not suppressed")
	}
	x.h.opts.Retention = time.Nanosecond
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { x.h.Run(runCtx); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Once pruned, the same notification counts as new again.
		if first, _ := st.RecordNotification(ctx, "ses-feedback:fb-real", nil); first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run did not prune the claim")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

// TestRefused: tampered messages, certificates from anywhere but an SNS host, untrusted or expired
// certificates, unknown types and foreign topics are refused with a 4xx, counted, and change nothing.
func TestRefused(t *testing.T) {
	x := newHarness(t)
	otherCA := newPKI(t)
	expiredKey, expiredPEM := x.pki.issue(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	const otherURL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-other.pem"
	const expiredURL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-expired.pem"
	x.fetch.files[otherURL] = otherCA.certPEM
	x.fetch.files[expiredURL] = expiredPEM
	badHosts := []string{
		"https://sns.eu-west-1.amazonaws.com.evil.example/SimpleNotificationService-x.pem",
		"http://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
		"https://evil.example/sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
		"https://evil.sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
		"https://sns.eu-west-1.amazonaws.com:8443/SimpleNotificationService-x.pem",
		"https://user@sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
		"https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem?x=1",
		"https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.txt",
		"https://sqs.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
	}
	msg := bounceEvent("notificationType", "Bounce", "Permanent", "fb-r", "victim@example.org")
	type tc struct {
		name   string
		status int
		body   func() []byte
	}
	var cases []tc
	mk := func(mut func(e *Envelope)) func() []byte {
		return func() []byte {
			e := notification("sns-r", msg)
			sign(t, e, "2", x.pki.key, certURL)
			mut(e)
			b, _ := json.Marshal(e)
			return b
		}
	}
	cases = append(cases,
		tc{"tampered message", 403, mk(func(e *Envelope) { e.Message = strings.Replace(e.Message, "victim", "other", -1) })},
		tc{"tampered timestamp", 403, mk(func(e *Envelope) { e.Timestamp = "2026-11-27T06:00:00.000Z" })},
		tc{"signature v1 claimed for a v2 signature", 403, mk(func(e *Envelope) { e.SignatureVersion = "1" })},
		tc{"unsupported signature version", 403, mk(func(e *Envelope) { e.SignatureVersion = "3" })},
		tc{"signature not base64", 403, mk(func(e *Envelope) { e.Signature = "!!" })},
		tc{"unknown type", 400, mk(func(e *Envelope) { e.Type = "Broadcast" })},
		tc{"foreign topic", 403, mk(func(e *Envelope) { e.TopicArn = "arn:aws:sns:eu-west-1:999999999999:attacker" })},
		tc{"unsigned", 400, mk(func(e *Envelope) { e.Signature = "" })},
		tc{"not json", 400, func() []byte { return []byte("{") }},
		tc{"too large", 413, func() []byte { return bytes.Repeat([]byte(" "), DefaultMaxBodyBytes+1) }},
		tc{"certificate from another CA", 403, func() []byte {
			e := notification("sns-r", msg)
			sign(t, e, "2", otherCA.key, otherURL)
			b, _ := json.Marshal(e)
			return b
		}},
		tc{"expired certificate", 403, func() []byte {
			e := notification("sns-r", msg)
			sign(t, e, "2", expiredKey, expiredURL)
			b, _ := json.Marshal(e)
			return b
		}},
	)
	for _, h := range badHosts {
		x.fetch.files[h] = x.pki.certPEM // even if the attacker's host serves the genuine certificate
		cases = append(cases, tc{"signing host " + h, 403, func() []byte {
			e := notification("sns-r", msg)
			sign(t, e, "2", x.pki.key, h)
			b, _ := json.Marshal(e)
			return b
		}})
	}
	refused := 0.0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := x.postRaw(c.body(), "")
			if rec.Code != c.status {
				t.Fatalf("status %d, want %d (%s)", rec.Code, c.status, rec.Body)
			}
			refused++
		})
	}
	bounces, sup := x.store.snapshot()
	if len(bounces) != 0 || len(sup) != 0 || len(x.store.processed) != 0 {
		t.Fatalf("a refused message changed the store: %v %v %v", bounces, sup, x.store.processed)
	}
	for _, u := range x.fetch.called() {
		for _, h := range badHosts {
			if u == h {
				t.Errorf("fetched a certificate from %s", u)
			}
		}
	}
	got := x.count("notification", "refused") + x.count("unknown", "refused")
	if got != refused {
		t.Errorf("refused counted %v, want %v", got, refused)
	}
	// Each refusal happened for its own reason, not an incidental one.
	logs := x.logs.String()
	for _, why := range []string{"signature does not match the message", "is not an SNS endpoint", "is not https",
		"not trusted", "not valid now", "unsupported SignatureVersion", "not a .pem file", "unknown SNS message type",
		"topic not configured", "body too large"} {
		if !strings.Contains(logs, why) {
			t.Errorf("no refusal logged for %q", why)
		}
	}
	// A header that contradicts the body, and a GET, are refused too.
	e := notification("sns-h", msg)
	sign(t, e, "2", x.pki.key, certURL)
	b, _ := json.Marshal(e)
	if rec := x.postRaw(b, TypeSubscriptionConfirmation); rec.Code != 400 {
		t.Errorf("type header mismatch: %d", rec.Code)
	}
	rec := httptest.NewRecorder()
	x.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ses/events", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", rec.Code)
	}
	// And the genuine message still works afterwards.
	if rec := x.postRaw(b, TypeNotification); rec.Code != 200 {
		t.Fatalf("genuine message: %d %s", rec.Code, rec.Body)
	}
}

// TestSubscriptionConfirmation: a verified confirmation GETs its SubscribeURL; one pointing anywhere but
// an SNS host, or tampered, is refused and nothing is fetched.
func TestSubscriptionConfirmation(t *testing.T) {
	x := newHarness(t)
	const subURL = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:eu-west-1:111122223333:mailgate-ses-events&Token=2336412f37"
	x.fetch.files[subURL] = []byte("<ConfirmSubscriptionResponse/>")
	conf := func(u string) *Envelope {
		token := "2336412f37"
		return &Envelope{
			Type: TypeSubscriptionConfirmation, MessageID: "sns-sub", Token: &token, TopicArn: topic,
			Message:      "You have chosen to subscribe to the topic " + topic + ".",
			SubscribeURL: &u, Timestamp: "2026-11-27T05:00:00.000Z",
		}
	}

	evil := "https://evil.example/?Action=ConfirmSubscription"
	e := conf(evil)
	sign(t, e, "2", x.pki.key, certURL)
	if rec := x.post(t, e); rec.Code != 403 {
		t.Fatalf("evil SubscribeURL: %d", rec.Code)
	}
	e = conf(subURL)
	sign(t, e, "1", x.pki.key, certURL)
	good := *e
	e.Token = func() *string { s := "other"; return &s }()
	if rec := x.post(t, e); rec.Code != 403 {
		t.Fatalf("tampered token: %d", rec.Code)
	}
	for _, u := range x.fetch.called() {
		if u != certURL {
			t.Fatalf("fetched %s before a valid confirmation", u)
		}
	}
	if rec := x.post(t, &good); rec.Code != 200 {
		t.Fatalf("valid confirmation: %d %s\n%s", rec.Code, rec.Body, x.logs)
	}
	calls := x.fetch.called()
	if calls[len(calls)-1] != subURL {
		t.Fatalf("SubscribeURL not fetched: %v", calls)
	}
	if x.count("subscription_confirmation", "confirmed") != 1 {
		t.Error("not counted")
	}
	// A failing confirmation GET answers 502 so SNS tries again.
	delete(x.fetch.files, subURL)
	if rec := x.post(t, &good); rec.Code != http.StatusBadGateway {
		t.Fatalf("failed GET: %d", rec.Code)
	}

	// UnsubscribeConfirmation is verified and logged, never followed.
	u := conf(subURL)
	u.Type = TypeUnsubscribeConfirmation
	sign(t, u, "2", x.pki.key, certURL)
	before := len(x.fetch.called())
	if rec := x.post(t, u); rec.Code != 200 {
		t.Fatalf("unsubscribe: %d", rec.Code)
	}
	if len(x.fetch.called()) != before {
		t.Error("UnsubscribeConfirmation was followed")
	}
	if !strings.Contains(x.logs.String(), "ses events unsubscribed") {
		t.Error("unsubscribe not logged")
	}
}

func TestCheckSNSURL(t *testing.T) {
	good := []string{
		"https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-x.pem",
		"https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-x.pem",
		"https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem",
		"https://sns.ap-southeast-3.amazonaws.com/?Action=ConfirmSubscription&Token=x",
	}
	bad := []string{
		"", "sns.eu-west-1.amazonaws.com/x.pem", "https://sns.amazonaws.com/x.pem", "https://sns..amazonaws.com/x.pem",
		"https://sns.-.amazonaws.com/x.pem", "https://sns.eu.west.amazonaws.com/x.pem", "https://SNS.eu-west-1.amazonaws.com/x.pem",
		"https://sns.eu-west-1.amazonaws.com.evil.example/x.pem", "https://sns.eu-west-1.amazonaws.com%2eevil.example/x.pem",
		"https://sns.eu-west-1.amazonaws.com#@evil.example/x.pem", "https://sns.eu_west-1.amazonaws.com/x.pem",
		"ftp://sns.eu-west-1.amazonaws.com/x.pem", "https:sns.eu-west-1.amazonaws.com/x.pem",
	}
	for _, u := range good {
		if _, err := CheckSNSURL(u); err != nil {
			t.Errorf("%s refused: %v", u, err)
		}
	}
	for _, u := range bad {
		if _, err := CheckSNSURL(u); err == nil {
			t.Errorf("%s accepted", u)
		}
	}
}

func TestBounceCodes(t *testing.T) {
	rows := []struct {
		r        Recipient
		subType  string
		code     int
		enhanced relay.EnhancedCode
	}{
		{Recipient{Status: "5.1.1", DiagnosticCode: "smtp; 550 5.1.1 user unknown"}, "General", 550, "5.1.1"},
		{Recipient{DiagnosticCode: "smtp; 554 5.7.1 rejected by policy"}, "General", 554, "5.7.1"},
		{Recipient{Status: "5.2.2", DiagnosticCode: "smtp;552-5.2.2 mailbox full"}, "General", 552, "5.2.2"},
		{Recipient{}, "NoEmail", 550, relay.CodeBadMailbox},
		{Recipient{}, "OnAccountSuppressionList", 550, relay.CodePolicy},
		{Recipient{}, "MessageTooLarge", 550, relay.CodeTooBig},
		{Recipient{Status: "4.4.7", DiagnosticCode: "smtp; 421 4.4.7 gave up"}, "General", 550, "5.0.0"},
	}
	for _, row := range rows {
		code, enh := bounceCodes(row.r, row.subType)
		if code != row.code || enh != row.enhanced {
			t.Errorf("%+v %s: got %d %s, want %d %s", row.r, row.subType, code, enh, row.code, row.enhanced)
		}
	}
}

// TestHTTPFetcher: the production fetcher refuses redirects, non-200 answers and oversized bodies.
func TestHTTPFetcher(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte("cert"))
		case "/big":
			w.Write(bytes.Repeat([]byte("x"), 100))
		case "/redirect":
			http.Redirect(w, r, "/ok", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	f := HTTPFetcher{MaxBytes: 50}
	if b, err := f.Fetch(context.Background(), srv.URL+"/ok"); err != nil || string(b) != "cert" {
		t.Fatalf("%q %v", b, err)
	}
	for _, p := range []string{"/big", "/redirect", "/missing"} {
		if _, err := f.Fetch(context.Background(), srv.URL+p); err == nil {
			t.Errorf("%s accepted", p)
		}
	}
}

// TestNoFetchBeforeTopicCheck: unauthenticated POSTs naming attacker-chosen certificate hosts — from a
// topic not configured, or from the configured topic but a certificate host outside the topic's region —
// make no fetch at all; and a handler without topics cannot be built.
func TestNoFetchBeforeTopicCheck(t *testing.T) {
	x := newHarness(t)
	msg := bounceEvent("notificationType", "Bounce", "Permanent", "fb-t", "victim@example.org")
	for _, c := range []struct{ topic, cert string }{
		{"arn:aws:sns:eu-west-1:999999999999:attacker", "https://sns.attacker-1.amazonaws.com/SimpleNotificationService-x.pem"},
		{"arn:aws:sns:us-east-9:999999999999:attacker", "https://sns.us-east-9.amazonaws.com/SimpleNotificationService-x.pem"},
		{"arn:aws:sns:eu-west-1:999999999999:attacker", certURL},
		{topic, "https://sns.attacker-1.amazonaws.com/SimpleNotificationService-x.pem"},
		{topic, "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem"},
	} {
		e := notification("sns-t", msg)
		e.TopicArn = c.topic
		sign(t, e, "2", x.pki.key, c.cert)
		if rec := x.post(t, e); rec.Code != http.StatusForbidden {
			t.Errorf("topic %s cert %s: %d, want 403", c.topic, c.cert, rec.Code)
		}
	}
	if calls := x.fetch.called(); len(calls) != 0 {
		t.Errorf("fetched %v for messages that should have been refused unfetched", calls)
	}
	_, err := New(Options{Store: x.store, Fetcher: x.fetch})
	if err == nil || !strings.Contains(err.Error(), "TopicARNs is required") {
		t.Errorf("New without topics: %v", err)
	}
}

// TestCertificateFetchCached: a certificate URL that fails is fetched once however many messages name
// it (negative cache), concurrent messages share one fetch, and after FailureTTL it is fetched again.
func TestCertificateFetchCached(t *testing.T) {
	x := newHarness(t)
	now := time.Now()
	var mu sync.Mutex
	x.h.verifier.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	const missing = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-missing.pem"
	msg := bounceEvent("notificationType", "Bounce", "Permanent", "fb-c", "victim@example.org")
	e := notification("sns-c", msg)
	sign(t, e, "2", x.pki.key, missing)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if rec := x.post(t, e); rec.Code != http.StatusForbidden {
				t.Errorf("missing certificate: %d", rec.Code)
			}
		}()
	}
	wg.Wait()
	if calls := x.fetch.called(); len(calls) != 1 {
		t.Fatalf("%d fetches for one failing URL, want 1: %v", len(calls), calls)
	}
	// The host answers again; within the TTL the failure stands, after it the certificate is fetched.
	x.fetch.mu.Lock()
	x.fetch.files[missing] = x.pki.certPEM
	x.fetch.mu.Unlock()
	if rec := x.post(t, e); rec.Code != http.StatusForbidden {
		t.Fatalf("within the failure TTL: %d", rec.Code)
	}
	mu.Lock()
	now = now.Add(DefaultFailureTTL + time.Second)
	mu.Unlock()
	if rec := x.post(t, e); rec.Code != http.StatusOK {
		t.Fatalf("after the failure TTL: %d %s", rec.Code, rec.Body)
	}
	if rec := x.post(t, e); rec.Code != http.StatusOK {
		t.Fatalf("again: %d %s", rec.Code, rec.Body)
	}
	if calls := x.fetch.called(); len(calls) != 2 {
		t.Errorf("%d fetches, want 2 (one failure, one success, then cached): %v", len(calls), calls)
	}
}
