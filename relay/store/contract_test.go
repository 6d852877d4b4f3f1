package store

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/peertest"
)

// backend opens a fresh, empty store of one kind; another opens a second Store on the same database,
// as a second process or instance would (closed when the test ends).
type backend struct {
	name string
	open func(t testing.TB) (s Store, another func() Store)
}

// backends are the two implementations of the contract: every contract case runs on both.
func backends() []backend {
	return []backend{
		{"sqlite", func(t testing.TB) (Store, func() Store) {
			s, path := openStore(t)
			return s, func() Store {
				s2, err := Open(path)
				must(t, err)
				t.Cleanup(func() { s2.Close() })
				return s2
			}
		}},
		{"postgres", func(t testing.TB) (Store, func() Store) {
			dsn := peertest.PostgresSchema(t)
			s := openPostgres(t, dsn)
			return s, func() Store { return openPostgres(t, dsn) }
		}},
	}
}

func openPostgres(t testing.TB, dsn string) *Postgres {
	t.Helper()
	s, err := OpenPostgres(context.Background(), dsn, PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestContract runs the store contract against SQLite and PostgreSQL.
func TestContract(t *testing.T) {
	cases := []struct {
		name string
		run  func(*testing.T, backend)
	}{
		{"BounceWithoutSuppression", contractBounceWithoutSuppression},
		{"BouncesAndSuppression", contractBouncesAndSuppression},
		{"SuppressComplaint", contractSuppressComplaint},
		{"ConcurrentRecordBounce", contractConcurrentRecordBounce},
		{"DeliveryLog", contractDeliveryLog},
		{"Secrets", contractSecrets},
		{"RecordNotification", contractRecordNotification},
		{"ErrorsAreTemporaryRelayErrors", contractErrorsAreTemporaryRelayErrors},
		{"DeliveryLogGroupCommit", contractDeliveryLogGroupCommit},
		{"DeliveryLogAfterClose", contractDeliveryLogAfterClose},
		{"LogDeliveryLater", contractLogDeliveryLater},
		{"DeliveryRecipients", contractDeliveryRecipients},
		{"SuppressionSeenAcrossStores", contractSuppressionSeenAcrossStores},
		{"LockRefresh", contractLockRefresh},
	}
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) { c.run(t, b) })
			}
		})
	}
}

// A bounce that is not the address's fault (the message, Force TLS, an expired lifetime) is recorded,
// listed with its fault and Suppressed=false, and leaves the address free — also when the same address
// is already listed for an earlier reason, which it must not refresh.
func contractBounceWithoutSuppression(t *testing.T, bk backend) {
	ctx := context.Background()
	s, _ := bk.open(t)
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

func contractBouncesAndSuppression(t *testing.T, bk backend) {
	ctx := context.Background()
	s, _ := bk.open(t)
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

func contractSuppressComplaint(t *testing.T, bk backend) {
	ctx := context.Background()
	s, _ := bk.open(t)
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

func contractConcurrentRecordBounce(t *testing.T, bk backend) {
	ctx := context.Background()
	s, _ := bk.open(t)
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

func contractDeliveryLog(t *testing.T, bk backend) {
	ctx := context.Background()
	s, _ := bk.open(t)
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

func contractSecrets(t *testing.T, bk backend) {
	ctx := context.Background()
	s, another := bk.open(t)
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
	s2 := another()
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

func contractRecordNotification(t *testing.T, bk backend) {
	ctx := context.Background()
	s, _ := bk.open(t)
	b := bounce("gone@example.net", time.Now())
	b.Reason = "ses_bounce"
	if firsts := claimConcurrently(t, "sns-0001", []relay.Bounce{b}, s); firsts != 1 {
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

func contractErrorsAreTemporaryRelayErrors(t *testing.T, bk backend) {
	s, _ := bk.open(t)
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

// contractDeliveryLogGroupCommit: many concurrent writers all get their rows, and the later state of one
// message (written after the earlier call returned) always wins.
func contractDeliveryLogGroupCommit(t *testing.T, bk backend) {
	s, _ := bk.open(t)
	ctx := context.Background()
	const writers, each = 32, 20
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				id := fmt.Sprintf("q%02d-%02d", w, i)
				for _, status := range []string{"queued", "delivered"} {
					if err := s.LogDelivery(ctx, relay.DeliveryRecord{QueueID: id, Ticket: "T1", Status: status, Time: time.Now()}); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	rs, err := s.Deliveries(ctx, DeliveryFilter{Ticket: "T1", Limit: writers * each * 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != writers*each {
		t.Fatalf("%d rows, want %d", len(rs), writers*each)
	}
	for _, r := range rs {
		if r.Status != "delivered" {
			t.Fatalf("%s ended %q, want delivered", r.QueueID, r.Status)
		}
	}
}

// contractDeliveryLogAfterClose: a write after Close is an error, not a panic or a hang.
func contractDeliveryLogAfterClose(t *testing.T, bk backend) {
	s, _ := bk.open(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.LogDelivery(context.Background(), relay.DeliveryRecord{QueueID: "x", Time: time.Now()}); err == nil {
		t.Fatal("LogDelivery after Close succeeded")
	}
}

// contractLogDeliveryLater: a row queued without waiting is written, in order with later rows of the
// same message.
func contractLogDeliveryLater(t *testing.T, bk backend) {
	s, _ := bk.open(t)
	ctx := context.Background()
	failed := make(chan error, 1)
	s.LogDeliveryLater(relay.DeliveryRecord{QueueID: "later1", Ticket: "L1", Status: "queued", Time: time.Now()}, func(_ relay.DeliveryRecord, err error) { failed <- err })
	if err := s.LogDelivery(ctx, relay.DeliveryRecord{QueueID: "later1", Ticket: "L1", Status: "delivered", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	rs, err := s.Deliveries(ctx, DeliveryFilter{Ticket: "L1"})
	if err != nil || len(rs) != 1 || rs[0].Status != "delivered" {
		t.Fatalf("rows %+v, %v", rs, err)
	}
	select {
	case err := <-failed:
		t.Fatalf("queued row failed: %v", err)
	default:
	}
}

// contractSuppressionSeenAcrossStores: the daemon's cached list follows changes made by another process
// (here a second Store on the same file, as `mailgate bounces remove` is) within suppressionRecheck,
// and its own writes at once.
func contractSuppressionSeenAcrossStores(t *testing.T, bk backend) {
	daemon, another := bk.open(t)
	cli := another()
	ctx := context.Background()
	suppressed := func() bool {
		_, ok, err := daemon.Suppressed(ctx, "Customer@Example.net")
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if suppressed() {
		t.Fatal("suppressed before any bounce")
	}
	// Written by the daemon itself: seen at once.
	if err := daemon.RecordBounce(ctx, bounce("customer@example.net", time.Now())); err != nil {
		t.Fatal(err)
	}
	if !suppressed() {
		t.Fatal("own bounce not seen at once")
	}
	// Removed by another process: seen within the recheck interval, not before the cache expires.
	if _, err := cli.RemoveBounces(ctx, "customer@example.net"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for suppressed() {
		if time.Now().After(deadline) {
			t.Fatal("removal by another process never seen")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Added by another process (an SES complaint handled elsewhere): seen too.
	if err := cli.Suppress(ctx, "customer@example.net", "complaint", "ses_complaint"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(time.Second)
	for !suppressed() {
		if time.Now().After(deadline) {
			t.Fatal("suppression by another process never seen")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// contractLockRefresh: the lock excludes a second holder of the same key until unlock, and does not
// hold up another key.
func contractLockRefresh(t *testing.T, bk backend) {
	s, _ := bk.open(t)
	ctx := context.Background()
	unlock, err := s.LockRefresh(ctx, "oauth/m365")
	must(t, err)
	other, err := s.LockRefresh(ctx, "oauth/other")
	must(t, err)
	other()
	waiting, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if u, err := s.LockRefresh(waiting, "oauth/m365"); err == nil {
		u()
		t.Fatal("a second holder got the lock while the first held it")
	}
	got := make(chan func(), 1)
	go func() {
		u, err := s.LockRefresh(ctx, "oauth/m365")
		if err != nil {
			t.Error(err)
		}
		got <- u
	}()
	unlock()
	select {
	case u := <-got:
		u()
	case <-time.After(5 * time.Second):
		t.Fatal("the lock was not handed over after unlock")
	}
}

// contractDeliveryRecipients: the log keeps a row per recipient — a mixed outcome shows who got the
// message — and searches by recipient (any case), by a recipient's or the message's status, and by time.
func contractDeliveryRecipients(t *testing.T, bk backend) {
	s, _ := bk.open(t)
	ctx := context.Background()
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	mixed := relay.DeliveryRecord{QueueID: "mix1", Ticket: "77", Channel: "Support", Principal: "alice",
		Recipients: []string{"Got@Example.net", "gone@example.net"}, Status: "partial", Attempts: 1, Time: t0,
		States: []relay.RecipientState{
			{Address: "Got@Example.net", Status: "delivered", Reply: "250 2.0.0 ok", Time: t0},
			{Address: "gone@example.net", Status: "bounced", Code: 550, Enhanced: "5.1.1", Reply: "no such user", Time: t0},
		}}
	other := relay.DeliveryRecord{QueueID: "mix2", Ticket: "78", Channel: "Support", Principal: "alice",
		Recipients: []string{"late@example.net"}, Status: "deferred", Attempts: 2, Time: t0.Add(time.Hour),
		States: []relay.RecipientState{{Address: "late@example.net", Status: "pending", Code: 451, Enhanced: "4.4.1", Reply: "try later"}}}
	for _, r := range []relay.DeliveryRecord{mixed, other} {
		if err := s.LogDelivery(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Deliveries(ctx, DeliveryFilter{Rcpt: "GOT@example.net"})
	if err != nil || len(got) != 1 || got[0].QueueID != "mix1" || len(got[0].States) != 2 {
		t.Fatalf("rcpt search: %+v %v", got, err)
	}
	for _, st := range got[0].States {
		switch st.Address {
		case "Got@Example.net":
			if st.Status != "delivered" || st.Reply != "250 2.0.0 ok" {
				t.Errorf("delivered row %+v", st)
			}
		case "gone@example.net":
			if st.Status != "bounced" || st.Code != 550 || st.Enhanced != "5.1.1" || !st.Time.Equal(t0) {
				t.Errorf("bounced row %+v", st)
			}
		default:
			t.Errorf("unexpected row %+v", st)
		}
	}
	if got, _ := s.Deliveries(ctx, DeliveryFilter{Status: "bounced"}); len(got) != 1 || got[0].QueueID != "mix1" {
		t.Errorf("status=bounced (a recipient's status) found %+v", got)
	}
	if got, _ := s.Deliveries(ctx, DeliveryFilter{Status: "deferred"}); len(got) != 1 || got[0].QueueID != "mix2" {
		t.Errorf("status=deferred (the message's status) found %+v", got)
	}
	if got, _ := s.Deliveries(ctx, DeliveryFilter{Since: t0.Add(30 * time.Minute)}); len(got) != 1 || got[0].QueueID != "mix2" {
		t.Errorf("since found %+v", got)
	}
	if got, _ := s.Deliveries(ctx, DeliveryFilter{Until: t0.Add(30 * time.Minute)}); len(got) != 1 || got[0].QueueID != "mix1" {
		t.Errorf("until found %+v", got)
	}
	// A later state of the message replaces its recipients' rows.
	mixed.States[1] = relay.RecipientState{Address: "GONE@example.net", Status: "delivered", Reply: "250 late"}
	mixed.Time = t0.Add(2 * time.Hour)
	if err := s.LogDelivery(ctx, mixed); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Deliveries(ctx, DeliveryFilter{Rcpt: "gone@example.net"})
	if len(got) != 1 || len(got[0].States) != 2 {
		t.Fatalf("after the update: %+v", got)
	}
	for _, st := range got[0].States {
		if st.Status != "delivered" {
			t.Errorf("row not updated: %+v", st)
		}
	}
}

// notificationRecorder is the part of a store claimConcurrently uses.
type notificationRecorder interface {
	RecordNotification(ctx context.Context, id string, bs []relay.Bounce) (bool, error)
}

// claimConcurrently records notification id with its bounces from 8 goroutines at once, spread over
// the stores given (instances of one database), and returns how many saw it as the first.
func claimConcurrently(t *testing.T, id string, bs []relay.Bounce, stores ...notificationRecorder) int {
	t.Helper()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		firsts int
	)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			first, err := stores[i%len(stores)].RecordNotification(context.Background(), id, bs)
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
	return firsts
}
