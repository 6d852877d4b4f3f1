package store

import (
	"context"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// TestPostgresLeases: two instances share three slots of one mailbox; the fourth is refused, and the
// holders' shares drop from all three to two (three slots, two instances); a released slot is taken
// again; a slot whose holder stops renewing (crashed) comes back after its lease time.
func TestPostgresLeases(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	a, b := openPostgres(t, dsn), openPostgres(t, dsn)
	ctx := context.Background()
	const id, limit = "m365/support@contoso.example", 3
	var held []int64
	holder := map[*Postgres]string{a: "instance-a", b: "instance-b"}
	for i, s := range []*Postgres{a, a, b} {
		lease, ok, err := s.AcquireLease(ctx, id, holder[s], limit, time.Minute)
		if err != nil || !ok {
			t.Fatalf("lease %d: %v %v", i, ok, err)
		}
		held = append(held, lease)
	}
	if share, lost, err := a.RenewLeases(ctx, id, holder[a], held[:2], limit, time.Minute); err != nil || share != limit || len(lost) != 0 {
		t.Fatalf("share before any refusal: %d, lost %v, %v; want all %d", share, lost, err, limit)
	}
	if _, ok, err := b.AcquireLease(ctx, id, holder[b], limit, time.Minute); ok || err != nil {
		t.Fatalf("a fourth slot of three: %v %v", ok, err)
	}
	if share, _, err := a.RenewLeases(ctx, id, holder[a], held[:2], limit, time.Minute); err != nil || share != 2 {
		t.Fatalf("share with the other instance waiting: %d, %v; want 2 (3 slots, 2 instances)", share, err)
	}
	if share, _, _ := b.RenewLeases(ctx, id, holder[b], held[2:], limit, time.Minute); share != limit {
		t.Fatalf("the waiting instance's own demand caps its share: %d", share)
	}
	if _, ok, _ := b.AcquireLease(ctx, "other/box", holder[b], limit, time.Minute); !ok {
		t.Fatal("another mailbox's slots are taken too")
	}
	must(t, a.ReleaseLease(ctx, id, held[0]))
	if _, ok, err := b.AcquireLease(ctx, id, holder[b], limit, time.Minute); !ok || err != nil {
		t.Fatalf("a released slot is not taken again: %v %v", ok, err)
	}
	// Instance a "crashes" holding held[1] with a short lease: it lapses, and its slot comes back.
	must(t, a.ReleaseLease(ctx, id, held[1]))
	short, ok, err := a.AcquireLease(ctx, id, holder[a], limit, 300*time.Millisecond)
	if !ok || err != nil || short == 0 {
		t.Fatalf("short lease: %v %v", ok, err)
	}
	if _, ok, _ := b.AcquireLease(ctx, id, holder[b], limit, time.Minute); ok {
		t.Fatal("a fourth slot while the short lease is alive")
	}
	waitUntil(t, "the crashed instance's slot back", 5*time.Second, func() bool {
		_, ok, err := b.AcquireLease(ctx, id, holder[b], limit, time.Minute)
		must(t, err)
		return ok
	})
	// The "crashed" instance comes back and renews: its lapsed lease is reported lost, not revived.
	if _, lost, err := a.RenewLeases(ctx, id, holder[a], []int64{short}, limit, time.Minute); err != nil || len(lost) != 1 || lost[0] != short {
		t.Fatalf("renewing a lapsed lease: lost %v, %v; want it reported", lost, err)
	}
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
