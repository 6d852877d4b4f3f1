package store

import (
	"context"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// The group commit, close and LogDeliveryLater cases run against both stores in contract_test.go.

// TestLogDeliveryCoalesces: rows nobody waits for linger and a message's rows in one batch become one
// upsert with the last row's state and the first row's creation time.
func TestLogDeliveryCoalesces(t *testing.T) {
	s, _ := openStore(t)
	ctx := context.Background()
	queued := time.UnixMilli(1_700_000_000_000)
	s.LogDeliveryLater(relay.DeliveryRecord{QueueID: "c1", Ticket: "C1", Status: "queued", Time: queued}, nil)
	s.LogDeliveryLater(relay.DeliveryRecord{QueueID: "c1", Ticket: "C1", Status: "delivered", Time: queued.Add(time.Second)}, nil)
	// A row someone waits for ends the lingering batch; it is in the same transaction.
	if err := s.LogDelivery(ctx, relay.DeliveryRecord{QueueID: "c2", Ticket: "C1", Status: "queued", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var status string
	var created, updated int64
	if err := s.read.QueryRowContext(ctx, `SELECT status, created_ms, time_ms FROM deliveries WHERE queue_id = 'c1'`).Scan(&status, &created, &updated); err != nil {
		t.Fatal(err)
	}
	if status != "delivered" || created != queued.UnixMilli() || updated != queued.Add(time.Second).UnixMilli() {
		t.Errorf("row: %s created %d updated %d", status, created, updated)
	}
}
