package store

import (
	"context"
	"testing"
	"time"
)

// TestSuppressionSeenAcrossStores: the daemon's cached list follows changes made by another process
// (here a second Store on the same file, as `mailgate bounces remove` is) within suppressionRecheck,
// and its own writes at once.
func TestSuppressionSeenAcrossStores(t *testing.T) {
	daemon, path := openStore(t)
	cli, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
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
	deadline := time.Now().Add(suppressionRecheck + time.Second)
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
	deadline = time.Now().Add(suppressionRecheck + time.Second)
	for !suppressed() {
		if time.Now().After(deadline) {
			t.Fatal("suppression by another process never seen")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
