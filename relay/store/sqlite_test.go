package store

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
)

func openStore(t testing.TB) (*SQLite, string) {
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

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
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
