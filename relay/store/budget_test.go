package store

import (
	"context"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// TestPostgresLeases: two instances share three slots of one mailbox; the fourth is refused and marks
// the mailbox contended for the holders; a released slot is taken again; a slot whose holder stops
// renewing (crashed) comes back after its lease time.
func TestPostgresLeases(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	a, b := openPostgres(t, dsn), openPostgres(t, dsn)
	ctx := context.Background()
	const id, limit = "m365/support@contoso.example", 3
	var held []int64
	for i, s := range []*Postgres{a, a, b} {
		lease, ok, err := s.AcquireLease(ctx, id, limit, time.Minute)
		if err != nil || !ok {
			t.Fatalf("lease %d: %v %v", i, ok, err)
		}
		held = append(held, lease)
	}
	if contended, err := a.RenewLeases(ctx, id, held[:2], time.Minute); err != nil || contended {
		t.Fatalf("renew before any refusal: contended %v, %v", contended, err)
	}
	if _, ok, err := b.AcquireLease(ctx, id, limit, time.Minute); ok || err != nil {
		t.Fatalf("a fourth slot of three: %v %v", ok, err)
	}
	if contended, err := a.RenewLeases(ctx, id, held[:2], time.Minute); err != nil || !contended {
		t.Fatalf("the holder is not told of the waiting instance: contended %v, %v", contended, err)
	}
	if _, ok, _ := b.AcquireLease(ctx, "other/box", limit, time.Minute); !ok {
		t.Fatal("another mailbox's slots are taken too")
	}
	must(t, a.ReleaseLease(ctx, id, held[0]))
	if _, ok, err := b.AcquireLease(ctx, id, limit, time.Minute); !ok || err != nil {
		t.Fatalf("a released slot is not taken again: %v %v", ok, err)
	}
	// Instance a "crashes" holding held[1] with a short lease: it lapses, and its slot comes back.
	must(t, a.ReleaseLease(ctx, id, held[1]))
	short, ok, err := a.AcquireLease(ctx, id, limit, 300*time.Millisecond)
	if !ok || err != nil || short == 0 {
		t.Fatalf("short lease: %v %v", ok, err)
	}
	if _, ok, _ := b.AcquireLease(ctx, id, limit, time.Minute); ok {
		t.Fatal("a fourth slot while the short lease is alive")
	}
	waitUntil(t, "the crashed instance's slot back", 5*time.Second, func() bool {
		_, ok, err := b.AcquireLease(ctx, id, limit, time.Minute)
		must(t, err)
		return ok
	})
}

// TestPostgresWindows: the per-minute window is one counter for both instances: 30 messages a minute
// in all, with a wait until room appears; a refunded reservation frees its room.
func TestPostgresWindows(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	a, b := openPostgres(t, dsn), openPostgres(t, dsn)
	ctx := context.Background()
	const id = "m365/support@contoso.example"
	total := 0
	var lastBucket int64
	for i := range 40 {
		s := a
		if i%2 == 1 {
			s = b
		}
		g, bucket, wait, err := s.Reserve(ctx, id, "minute", 1, 30, time.Minute)
		must(t, err)
		total += g
		if g == 1 {
			lastBucket = bucket
		} else if wait <= 0 || wait > time.Minute {
			t.Fatalf("refused without a sensible wait: %v", wait)
		}
	}
	if total != 30 {
		t.Fatalf("two instances admitted %d messages in a minute, want 30", total)
	}
	must(t, a.Unreserve(ctx, id, "minute", 1, lastBucket))
	if g, _, _, _ := b.Reserve(ctx, id, "minute", 1, 30, time.Minute); g != 1 {
		t.Fatal("a refunded message does not free its room")
	}
	// Part of a multi-recipient reservation: what fits is granted.
	if g, _, wait, _ := a.Reserve(ctx, id, "day", 15, 10, 24*time.Hour); g != 10 || wait <= 0 {
		t.Fatalf("day window: granted %d of 15 (limit 10), wait %v", g, wait)
	}
}
