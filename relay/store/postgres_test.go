package store

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/peertest"
)

// TestPostgresMigrateOnce: instances starting together on an empty schema all open, and the schema is
// created once (the advisory lock makes the later ones wait and find it current). Without the lock the
// second CREATE TABLE fails.
func TestPostgresMigrateOnce(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	const instances = 4
	var wg sync.WaitGroup
	errs := make(chan error, instances)
	start := make(chan struct{})
	for range instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			s, err := OpenPostgres(context.Background(), dsn, PostgresOptions{})
			if err != nil {
				errs <- err
				return
			}
			s.Close()
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("an instance starting with the others failed: %v", err)
	}
	conn := pgConn(t, dsn)
	var v, rows int
	must(t, conn.QueryRow(context.Background(), `SELECT version, (SELECT count(*) FROM schema_version) FROM schema_version`).Scan(&v, &rows))
	if v != len(postgresMigrations()) || rows != 1 {
		t.Errorf("schema_version %d (%d rows), want %d in one row", v, rows, len(postgresMigrations()))
	}
	// A schema from a newer mailgate is refused, not misread.
	_, err := conn.Exec(context.Background(), `UPDATE schema_version SET version = 99`)
	must(t, err)
	if _, err := OpenPostgres(context.Background(), dsn, PostgresOptions{}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("OpenPostgres of a newer schema: %v", err)
	}
}

func pgConn(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	must(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestPostgresOutage: with the database unreachable (a proxy in front of it is cut), a suppression
// lookup and a bounce write fail promptly with a temporary 451 4.3.0 — never "not suppressed" — and
// once the database is back the same Store answers again, without a restart; nothing written before
// the outage is lost.
func TestPostgresOutage(t *testing.T) {
	schemaDSN := peertest.PostgresSchema(t)
	proxy := peertest.PostgresProxy(t)
	s := openPostgres(t, strings.Replace(schemaDSN, peertest.PostgresAddr, proxy.Addr(), 1))
	ctx := context.Background()
	must(t, s.RecordBounce(ctx, bounce("before@example.net", time.Now())))
	if _, ok, err := s.Suppressed(ctx, "before@example.net"); !ok || err != nil {
		t.Fatalf("Suppressed before the outage: %v %v", ok, err)
	}

	if err := s.Unavailable(); err != nil {
		t.Fatalf("Unavailable before the outage: %v", err)
	}
	proxy.Cut()
	waitUntil(t, "the outage noticed (queue.Gate)", 10*time.Second, func() bool { return s.Unavailable() != nil })
	temporary := func(what string, err error) {
		t.Helper()
		re, ok := relay.AsError(err)
		if !ok || re.Code != 451 || re.Enhanced != relay.CodeTempLocal || relay.IsPermanent(err) {
			t.Errorf("%s during the outage: %v, want 451 4.3.0", what, err)
		}
	}
	// The cached list is stale at once (the listener connection dropped): the lookup must ask.
	deadline := time.Now().Add(10 * time.Second)
	for {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		began := time.Now()
		_, ok, err := s.Suppressed(lctx, "before@example.net")
		cancel()
		if err != nil {
			temporary("Suppressed", err)
			if d := time.Since(began); d > 6*time.Second {
				t.Errorf("a lookup took %v to fail", d)
			}
			break
		}
		if !ok {
			t.Fatal("a suppressed address answered as not suppressed during the outage")
		}
		if time.Now().After(deadline) {
			t.Fatal("lookups kept answering from the cache 10s into the outage")
		}
		time.Sleep(50 * time.Millisecond)
	}
	temporary("RecordBounce", s.RecordBounce(ctx, bounce("during@example.net", time.Now())))
	temporary("LogDelivery", s.LogDelivery(ctx, relay.DeliveryRecord{QueueID: "q-outage", Status: "queued"}))

	temporary("Unavailable", s.Unavailable())
	proxy.Restore()
	waitUntil(t, "the store available again", 10*time.Second, func() bool { return s.Unavailable() == nil })
	deadline = time.Now().Add(15 * time.Second)
	for {
		err := s.RecordBounce(ctx, bounce("after@example.net", time.Now()))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the store did not recover after the database came back: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, addr := range []string{"before@example.net", "after@example.net"} {
		if _, ok, err := s.Suppressed(ctx, addr); !ok || err != nil {
			t.Errorf("Suppressed(%s) after recovery: %v %v", addr, ok, err)
		}
	}
	if _, ok, _ := s.Suppressed(ctx, "during@example.net"); ok {
		t.Error("a write that failed during the outage was applied")
	}
}

// TestPostgresDSNNeverInErrors: a password in the DSN shows in no error and not in Describe, whether
// the DSN does not parse or the server cannot be reached.
func TestPostgresDSNNeverInErrors(t *testing.T) {
	const password = "s3cret-Pa55"
	proxy := peertest.PostgresProxy(t)
	proxy.Cut()
	for _, dsn := range []string{
		"postgres://mailgate:" + password + "@" + proxy.Addr() + "/test?sslmode=disable&connect_timeout=2",
		"host=" + strings.Replace(proxy.Addr(), ":", " port=", 1) + " user=mailgate password=" + password + " dbname=test sslmode=disable connect_timeout=2",
		"postgres://mailgate:" + password + "@[::1/test?%zz",
		"host=x password='" + password + " port=notanumber",
	} {
		_, err := OpenPostgres(context.Background(), dsn, PostgresOptions{})
		if err == nil {
			t.Fatalf("opened %q", dsn)
		}
		for e := err; e != nil; e = errors.Unwrap(e) {
			if strings.Contains(e.Error(), password) {
				t.Errorf("the password is in the error: %v", e)
			}
		}
	}
	dsn := peertest.PostgresSchema(t)
	s := openPostgres(t, strings.Replace(dsn, "postgres@", "postgres:"+password+"@", 1))
	if d := s.Describe(); strings.Contains(d, password) || !strings.Contains(d, "postgresql 127.0.0.1:5432/test") {
		t.Errorf("Describe() = %q", d)
	}
}

// TestPostgresNotificationClaimAcrossInstances: two instances receiving the same SNS notification
// (SNS may deliver it to either) record it once.
func TestPostgresNotificationClaimAcrossInstances(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	a, b := openPostgres(t, dsn), openPostgres(t, dsn)
	ctx := context.Background()
	bs := []relay.Bounce{bounce("x@example.net", time.Now()), bounce("w@example.net", time.Now())}
	firsts := claimConcurrently(t, "sns-shared", bs, a, b)
	if got, _ := a.Bounces(ctx, BounceFilter{}); firsts != 1 || len(got) != 2 {
		t.Errorf("%d first claims, %d bounces; want 1 and 2", firsts, len(got))
	}
}

// TestPostgresSuppressionPropagation measures how long an address suppressed through one instance
// takes to be refused by another (the LISTEN/NOTIFY path); the bound is 1 s.
func TestPostgresSuppressionPropagation(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	a, b := openPostgres(t, dsn), openPostgres(t, dsn)
	ctx := context.Background()
	var worst time.Duration
	for i := range 20 {
		addr := "p" + string(rune('a'+i)) + "@example.net"
		if _, ok, err := b.Suppressed(ctx, addr); ok || err != nil { // b's cache is loaded and current
			t.Fatalf("suppressed before: %v %v", ok, err)
		}
		began := time.Now()
		must(t, a.RecordBounce(ctx, bounce(addr, time.Now())))
		for {
			_, ok, err := b.Suppressed(ctx, addr)
			must(t, err)
			if ok {
				break
			}
			if time.Since(began) > time.Second {
				t.Fatalf("%s not suppressed on the other instance after 1s", addr)
			}
			time.Sleep(time.Millisecond)
		}
		worst = max(worst, time.Since(began))
	}
	t.Logf("suppression propagation between instances: worst of 20 = %v (RecordBounce included)", worst)
}

func waitUntil(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPostgresLockRefreshAcrossInstances: the refresh lock excludes another instance on the same
// database, and comes back when its holder's process dies (here: its connection is cut).
func TestPostgresLockRefreshAcrossInstances(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	proxy := peertest.PostgresProxy(t)
	crashing := openPostgres(t, strings.Replace(dsn, peertest.PostgresAddr, proxy.Addr(), 1))
	other := openPostgres(t, dsn)
	ctx := context.Background()
	_, err := crashing.LockRefresh(ctx, "oauth/m365")
	must(t, err)
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if u, err := other.LockRefresh(short, "oauth/m365"); err == nil {
		u()
		t.Fatal("another instance got the lock while the first held it")
	}
	proxy.Cut() // the holder's session ends, as if it crashed
	long, cancel2 := context.WithTimeout(ctx, 10*time.Second)
	defer cancel2()
	u, err := other.LockRefresh(long, "oauth/m365")
	if err != nil {
		t.Fatalf("the lock of a dead instance did not come back: %v", err)
	}
	u()
}

// TestPostgresPartition: the database stops answering without closing anything (a partition, no RST).
// The store notices within a few seconds (its listener pings), from then on answers suppression
// lookups with 451 at once instead of waiting out a connection, and recovers when the network does.
func TestPostgresPartition(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	proxy := peertest.PostgresProxy(t)
	s := openPostgres(t, strings.Replace(dsn, peertest.PostgresAddr, proxy.Addr(), 1))
	ctx := context.Background()
	must(t, s.RecordBounce(ctx, bounce("p@example.net", time.Now())))
	proxy.Stall()
	waitUntil(t, "the partition noticed", 15*time.Second, func() bool { return s.Unavailable() != nil })
	began := time.Now()
	_, ok, err := s.Suppressed(ctx, "p@example.net")
	if re, isRelay := relay.AsError(err); !isRelay || re.Code != 451 || ok {
		t.Fatalf("lookup during the partition: %v %v, want 451", ok, err)
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("a lookup during a known partition took %v", d)
	}
	proxy.Restore()
	waitUntil(t, "recovery after the partition", 20*time.Second, func() bool {
		_, ok, err := s.Suppressed(ctx, "p@example.net")
		return err == nil && ok
	})
}
