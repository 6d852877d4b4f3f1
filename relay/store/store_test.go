package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
)

func openStore(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mailgate.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func bounce(addr string, at time.Time) relay.Bounce {
	return relay.Bounce{
		Address: addr, Channel: "Support", Time: at, Code: 550, Enhanced: relay.CodeBadMailbox,
		Diagnostic: "user unknown", MessageID: "m1@example.com", Ticket: "123456", QueueID: "q1", Reason: "upstream",
		Fault: relay.FaultAddress, Suppressed: true,
	}
}

// A bounce that is not the address's fault (the message, Force TLS, an expired lifetime) is recorded,
// listed with its fault and Suppressed=false, and leaves the address free — also when the same address
// is already listed for an earlier reason, which it must not refresh.
func TestBounceWithoutSuppression(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC)
	for _, f := range []relay.Fault{relay.FaultMessage, relay.FaultTLS, relay.FaultSetup} {
		b := bounce("innocent@example.net", t0)
		b.Code, b.Enhanced, b.Diagnostic, b.Fault, b.Suppressed = 554, "5.7.1", "spam", f, false
		if err := s.RecordBounce(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, err := s.Suppressed(ctx, "innocent@example.net"); ok || err != nil {
		t.Fatalf("suppressed after bounces that were not its fault: %v %v", ok, err)
	}
	got, err := s.Bounces(ctx, BounceFilter{Address: "innocent@example.net"})
	if err != nil || len(got) != 3 {
		t.Fatalf("bounces %+v %v", got, err)
	}
	for _, b := range got {
		if b.Suppressed || b.Fault == relay.FaultAddress || b.Fault == relay.FaultNone {
			t.Errorf("listed as %+v", b)
		}
	}
	if err := s.RecordBounce(ctx, bounce("gone@example.net", t0)); err != nil {
		t.Fatal(err)
	}
	later := bounce("gone@example.net", t0.Add(time.Hour))
	later.Diagnostic, later.Fault, later.Suppressed = "content refused", relay.FaultMessage, false
	if err := s.RecordBounce(ctx, later); err != nil {
		t.Fatal(err)
	}
	if reason, ok, _ := s.Suppressed(ctx, "gone@example.net"); !ok || !strings.Contains(reason, "user unknown") {
		t.Errorf("suppression reason %q (%v): a message bounce must not rewrite it", reason, ok)
	}
}

func TestBouncesAndSuppression(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	t0 := time.Date(2026, 11, 1, 10, 0, 0, 0, time.FixedZone("CET", 3600))
	if err := s.RecordBounce(ctx, bounce("Customer@Example.NET", t0)); err != nil {
		t.Fatal(err)
	}
	b2 := bounce("customer@example.net", t0.Add(time.Hour))
	b2.Channel, b2.Code, b2.Enhanced, b2.Diagnostic = "Sales", 550, "5.2.1", "mailbox disabled"
	if err := s.RecordBounce(ctx, b2); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordBounce(ctx, bounce("other@example.net", t0)); err != nil {
		t.Fatal(err)
	}

	for _, addr := range []string{"customer@example.net", "CUSTOMER@EXAMPLE.NET", " <Customer@example.net> "} {
		reason, ok, err := s.Suppressed(ctx, addr)
		if err != nil || !ok {
			t.Fatalf("Suppressed(%q) = %v %v", addr, ok, err)
		}
		// The latest bounce gives the reason.
		if !strings.Contains(reason, "550 5.2.1 mailbox disabled") {
			t.Errorf("reason %q", reason)
		}
	}
	if _, ok, _ := s.Suppressed(ctx, "fine@example.net"); ok {
		t.Error("an address that never bounced is suppressed")
	}

	all, err := s.Bounces(ctx, BounceFilter{})
	if err != nil || len(all) != 3 {
		t.Fatalf("Bounces = %d %v", len(all), err)
	}
	if all[0].Channel != "Sales" || !all[0].Time.Equal(t0.Add(time.Hour)) || all[0].Time.Location() != time.UTC {
		t.Errorf("newest first, UTC times: %+v", all[0])
	}
	want := bounce("Customer@Example.NET", t0)
	got, _ := s.Bounces(ctx, BounceFilter{Address: "CUSTOMER@example.net", Channel: "Support"})
	if len(got) != 1 || !got[0].Time.Equal(want.Time) {
		t.Fatalf("filtered bounces %+v", got)
	}
	got[0].Time = want.Time
	if got[0] != want {
		t.Errorf("round trip:\n got %+v\nwant %+v", got[0], want)
	}
	if got, _ := s.Bounces(ctx, BounceFilter{Limit: 1}); len(got) != 1 {
		t.Errorf("limit 1 gave %d", len(got))
	}

	n, err := s.RemoveBounces(ctx, "CUSTOMER@EXAMPLE.NET")
	if err != nil || n != 3 { // two bounces + the suppression entry
		t.Errorf("RemoveBounces = %d %v, want 3", n, err)
	}
	if _, ok, _ := s.Suppressed(ctx, "customer@example.net"); ok {
		t.Error("still suppressed after removal")
	}
	if got, _ := s.Bounces(ctx, BounceFilter{}); len(got) != 1 || got[0].Address != "other@example.net" {
		t.Errorf("remaining bounces %+v", got)
	}
	if n, _ := s.RemoveBounces(ctx, "nobody@example.net"); n != 0 {
		t.Errorf("removing an unknown address removed %d", n)
	}
	if err := s.RecordBounce(ctx, relay.Bounce{}); err == nil {
		t.Error("bounce without address accepted")
	}
}

func TestSuppressComplaint(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	if err := s.Suppress(ctx, "Complainer@Example.com", "complaint (abuse) via SES", "ses_complaint"); err != nil {
		t.Fatal(err)
	}
	reason, ok, err := s.Suppressed(ctx, "complainer@example.com")
	if err != nil || !ok || reason != "complaint (abuse) via SES" {
		t.Errorf("Suppressed = %q %v %v", reason, ok, err)
	}
	list, err := s.Suppressions(ctx, 0)
	if err != nil || len(list) != 1 || list[0].Source != "ses_complaint" || list[0].Address != "Complainer@Example.com" {
		t.Errorf("Suppressions = %+v %v", list, err)
	}
	if n, _ := s.RemoveBounces(ctx, "complainer@example.com"); n != 1 {
		t.Errorf("lifting a complaint suppression removed %d", n)
	}
	if err := s.Suppress(ctx, "  ", "x", "operator"); err == nil {
		t.Error("empty address suppressed")
	}
}

func TestConcurrentRecordBounce(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	const goroutines, each = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, goroutines*each)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				// Half the goroutines hit the same few addresses: upserts of one suppression row race.
				addr := fmt.Sprintf("u%d-%d@example.net", g, i)
				if g%2 == 0 {
					addr = fmt.Sprintf("SHARED%d@example.net", i%3)
				}
				if err := s.RecordBounce(ctx, bounce(addr, time.Now())); err != nil {
					errs <- err
				}
				if _, _, err := s.Suppressed(ctx, addr); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	all, err := s.Bounces(ctx, BounceFilter{Limit: 10000})
	if err != nil || len(all) != goroutines*each {
		t.Fatalf("%d bounces recorded, want %d (%v)", len(all), goroutines*each, err)
	}
	sup, _ := s.Suppressions(ctx, 10000)
	if want := goroutines/2*each + 3; len(sup) != want {
		t.Errorf("%d suppressed addresses, want %d", len(sup), want)
	}
}

func TestDeliveryLog(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	t0 := time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC)
	rec := relay.DeliveryRecord{
		QueueID: "q1", MessageID: "m1@example.com", Ticket: "123456", Channel: "Support", Principal: "demo",
		Recipients: []string{"a@example.net", "b@example.net"}, Status: "queued", Time: t0,
	}
	must(t, s.LogDelivery(ctx, rec))
	rec.Status, rec.Attempts, rec.LastReply, rec.Time = "delivered", 1, "250 2.0.0 Ok: queued as X", t0.Add(time.Second)
	must(t, s.LogDelivery(ctx, rec))
	other := relay.DeliveryRecord{QueueID: "q2", MessageID: "m2@example.com", Ticket: "123456", Status: "deferred", Time: t0.Add(time.Minute)}
	must(t, s.LogDelivery(ctx, other))
	must(t, s.LogDelivery(ctx, relay.DeliveryRecord{QueueID: "q3", Ticket: "999", Status: "queued"}))

	byTicket, err := s.Deliveries(ctx, DeliveryFilter{Ticket: "123456"})
	if err != nil || len(byTicket) != 2 || byTicket[0].QueueID != "q2" || byTicket[1].QueueID != "q1" {
		t.Fatalf("by ticket = %+v %v", byTicket, err)
	}
	got := byTicket[1]
	if got.Status != "delivered" || got.Attempts != 1 || got.LastReply != rec.LastReply ||
		!slices.Equal(got.Recipients, rec.Recipients) || !got.Time.Equal(rec.Time) || got.Principal != "demo" {
		t.Errorf("upserted record %+v", got)
	}
	if r, _ := s.Deliveries(ctx, DeliveryFilter{QueueID: "q2"}); len(r) != 1 || r[0].Status != "deferred" {
		t.Errorf("by queue id %+v", r)
	}
	if r, _ := s.Deliveries(ctx, DeliveryFilter{MessageID: "<m1@example.com>"}); len(r) != 1 || r[0].QueueID != "q1" {
		t.Errorf("by message id %+v", r)
	}
	if r, _ := s.Deliveries(ctx, DeliveryFilter{Limit: 2}); len(r) != 2 {
		t.Errorf("limit %d", len(r))
	}
	if r, _ := s.Deliveries(ctx, DeliveryFilter{Ticket: "nothing"}); len(r) != 0 {
		t.Errorf("unknown ticket %+v", r)
	}
	if err := s.LogDelivery(ctx, relay.DeliveryRecord{}); err == nil {
		t.Error("record without queue id accepted")
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestSecrets(t *testing.T) {
	ctx := context.Background()
	s, path := openStore(t)
	if _, ok, err := s.GetSecret(ctx, "oauth/m365/refresh"); ok || err != nil {
		t.Fatalf("missing secret: %v %v", ok, err)
	}
	must(t, s.PutSecret(ctx, "oauth/m365/refresh", "kms:AQIDBAU="))
	must(t, s.PutSecret(ctx, "oauth/m365/refresh", "kms:rotated=="))
	v, ok, err := s.GetSecret(ctx, "oauth/m365/refresh")
	if err != nil || !ok || v != "kms:rotated==" {
		t.Errorf("GetSecret = %q %v %v", v, ok, err)
	}
	// Survives a reopen.
	s.Close()
	s2, err := Open(path)
	must(t, err)
	defer s2.Close()
	if v, ok, _ := s2.GetSecret(ctx, "oauth/m365/refresh"); !ok || v != "kms:rotated==" {
		t.Errorf("after reopen: %q %v", v, ok)
	}
	must(t, s2.DeleteSecret(ctx, "oauth/m365/refresh"))
	must(t, s2.DeleteSecret(ctx, "oauth/m365/refresh"))
	if _, ok, _ := s2.GetSecret(ctx, "oauth/m365/refresh"); ok {
		t.Error("secret survived deletion")
	}
	if err := s2.PutSecret(ctx, "", "x"); err == nil {
		t.Error("empty key accepted")
	}
}

func TestRecordNotification(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	b := bounce("gone@example.net", time.Now())
	b.Reason = "ses_bounce"
	var firsts int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first, err := s.RecordNotification(ctx, "sns-0001", []relay.Bounce{b})
			if err != nil {
				t.Error(err)
			}
			if first {
				mu.Lock()
				firsts++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firsts != 1 {
		t.Errorf("%d callers saw the notification as first, want exactly 1", firsts)
	}
	if got, _ := s.Bounces(ctx, BounceFilter{Address: "gone@example.net"}); len(got) != 1 {
		t.Errorf("a notification delivered 8 times recorded %d bounces", len(got))
	}
	if _, ok, _ := s.Suppressed(ctx, "gone@example.net"); !ok {
		t.Error("the bounced address is not suppressed")
	}

	// A failure part way (the second bounce has no address) keeps nothing: not the claim, not the
	// first bounce, not its suppression. The redelivery then records everything.
	ok := bounce("second@example.net", time.Now())
	if first, err := s.RecordNotification(ctx, "sns-0002", []relay.Bounce{ok, {}}); err == nil || first {
		t.Fatalf("RecordNotification with a bad bounce = %v %v", first, err)
	}
	if _, sup, _ := s.Suppressed(ctx, "second@example.net"); sup {
		t.Fatal("a failed notification left a suppression behind")
	}
	if first, err := s.RecordNotification(ctx, "sns-0002", []relay.Bounce{ok}); err != nil || !first {
		t.Fatalf("the redelivery after a failure = %v %v, want it processed", first, err)
	}
	if _, sup, _ := s.Suppressed(ctx, "second@example.net"); !sup {
		t.Fatal("the redelivery did not suppress")
	}

	n, err := s.PruneProcessed(ctx, time.Now().Add(time.Minute))
	if err != nil || n != 2 {
		t.Errorf("PruneProcessed = %d %v", n, err)
	}
	if first, _ := s.RecordNotification(ctx, "sns-0001", nil); !first {
		t.Error("a pruned id is not first again")
	}
}

func TestSchemaVersion(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "odd?name#1.db") // URI metacharacters in the path
	s, err := Open(path)
	must(t, err)
	must(t, s.RecordBounce(context.Background(), bounce("a@example.net", time.Now())))
	s.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at its path: %v", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) == 0 || !strings.HasPrefix(entries[0].Name(), "odd?name#1.db") {
		t.Fatalf("files in %s: %v", dir, entries)
	}
	// Reopening migrates nothing and keeps the data.
	s, err = Open(path)
	must(t, err)
	if b, _ := s.Bounces(context.Background(), BounceFilter{}); len(b) != 1 {
		t.Errorf("bounces after reopen: %d", len(b))
	}
	var v int
	must(t, s.read.QueryRow(`SELECT version FROM schema_version`).Scan(&v))
	if v != len(migrations()) {
		t.Errorf("schema version %d, want %d", v, len(migrations()))
	}
	// A database written by a newer mailgate is refused, not misread.
	_, err = s.durable.Exec(`UPDATE schema_version SET version = 99`)
	must(t, err)
	s.Close()
	if _, err := Open(path); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open of a newer schema: %v", err)
	}
	// The file really is where the path says (the escaping did not create another one).
	db, err := sql.Open("sqlite", dsn(path, "NORMAL"))
	must(t, err)
	defer db.Close()
	var n int
	must(t, db.QueryRow(`SELECT count(*) FROM bounces`).Scan(&n))
	if n != 1 {
		t.Errorf("bounces in %s: %d", path, n)
	}
}

func TestErrorsAreTemporaryRelayErrors(t *testing.T) {
	s, _ := openStore(t)
	s.Close()
	err := s.RecordBounce(context.Background(), bounce("a@example.net", time.Now()))
	re, ok := relay.AsError(err)
	if !ok || re.Code != 451 || relay.IsPermanent(err) {
		t.Errorf("closed store error %v", err)
	}
	if _, _, err := s.Suppressed(context.Background(), "a@example.net"); err == nil {
		t.Error("closed store answered")
	}
}

// BenchmarkLogDelivery measures delivery-log upserts from concurrent queue workers (two per message:
// queued, then delivered).
func BenchmarkLogDelivery(b *testing.B) {
	s, _ := openStore(b)
	ctx := context.Background()
	var mu sync.Mutex
	seq := 0
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			seq++
			id := fmt.Sprintf("q%09d", seq/2)
			mu.Unlock()
			err := s.LogDelivery(ctx, relay.DeliveryRecord{
				QueueID: id, MessageID: id + "@example.com", Ticket: "123456", Channel: "Support", Principal: "demo",
				Recipients: []string{"a@example.net"}, Status: "delivered", Attempts: 1, LastReply: "250 ok",
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
