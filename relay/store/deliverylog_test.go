package store

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// TestDeliveryLogGroupCommit: many concurrent writers all get their rows, and the later state of one
// message (written after the earlier call returned) always wins.
func TestDeliveryLogGroupCommit(t *testing.T) {
	s, _ := openStore(t)
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

// TestDeliveryLogAfterClose: a write after Close is an error, not a panic or a hang.
func TestDeliveryLogAfterClose(t *testing.T) {
	s, _ := openStore(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.LogDelivery(context.Background(), relay.DeliveryRecord{QueueID: "x", Time: time.Now()}); err == nil {
		t.Fatal("LogDelivery after Close succeeded")
	}
}

// TestLogDeliveryLater: a row queued without waiting is written, in order with later rows of the
// same message.
func TestLogDeliveryLater(t *testing.T) {
	s, _ := openStore(t)
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
	// A row that cannot be written is reported with the row.
	s.Close()
	var gone relay.DeliveryRecord
	s.LogDeliveryLater(relay.DeliveryRecord{QueueID: "later2", Time: time.Now()}, func(r relay.DeliveryRecord, err error) {
		gone = r
		failed <- err
	})
	if err := <-failed; err == nil || gone.QueueID != "later2" {
		t.Errorf("row after Close: %+v, %v", gone, err)
	}
}

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
