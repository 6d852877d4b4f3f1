package queue

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/metrics"
	"github.com/mailgate/mailgate/relay/store"
)

var body10k = bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:-_+*\r\n"), 150)[:10240]

func benchQueue(b *testing.B, tr Transports, log DeliveryLog) *Queue {
	q, err := New(Options{
		Dir: b.TempDir(), Transports: tr, Metrics: metrics.New(prometheus.NewRegistry()),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Workers: 16, DeliveryLog: log,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { q.Close() })
	return q
}

func benchCommit(b *testing.B, q *Queue) string {
	d, err := q.Create()
	if err != nil {
		b.Fatal(err)
	}
	// Submission writes in chunks as the DATA stream arrives.
	for off := 0; off < len(body10k); off += 4096 {
		if _, err := d.Write(body10k[off:min(off+4096, len(body10k))]); err != nil {
			b.Fatal(err)
		}
	}
	id, err := d.Commit(context.Background(), relay.Envelope{
		Channel: "Support", Transport: "upstream", MailFrom: "b@example.com", Recipients: []string{"r@example.net"},
	})
	if err != nil {
		b.Fatal(err)
	}
	return id
}

// BenchmarkCommit measures a durable Create+Write(10 KiB)+Commit from 20 concurrent sessions, as the
// submission server does (no delivery: the queue is not running).
func BenchmarkCommit(b *testing.B) {
	q := benchQueue(b, TransportMap{}, nil)
	b.SetParallelism(10) // 2 cores × 10 = 20 sessions
	b.SetBytes(int64(len(body10k)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			benchCommit(b, q)
		}
	})
}

// BenchmarkCommitDeliver measures commit → delivered → removed from the spool with a transport that
// reads the body and accepts it at once: the queue's own cost per message end to end. The store variant
// adds the real SQLite delivery log (two upserts per message), as mailgate serve runs it.
func BenchmarkCommitDeliver(b *testing.B) {
	b.Run("nolog", func(b *testing.B) { benchCommitDeliver(b, nil) })
	b.Run("store", func(b *testing.B) {
		st, err := store.Open(filepath.Join(b.TempDir(), "mailgate.db"))
		if err != nil {
			b.Fatal(err)
		}
		defer st.Close()
		benchCommitDeliver(b, st)
	})
}

func benchCommitDeliver(b *testing.B, log DeliveryLog) {
	var delivered atomic.Int64
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		rc, err := m.Open()
		if err != nil {
			return relay.Failed(len(m.Recipients), err)
		}
		io.Copy(io.Discard, rc)
		rc.Close()
		delivered.Add(1)
		return relay.Result{Reply: "250 ok", Errs: make([]error, len(m.Recipients))}
	})}
	q := benchQueue(b, tr, log)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- q.Run(ctx) }()
	b.SetParallelism(10)
	b.SetBytes(int64(len(body10k)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			benchCommit(b, q)
		}
	})
	deadline := time.Now().Add(time.Minute)
	for len(q.List()) > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	if n := len(q.List()); n > 0 {
		b.Fatalf("%d messages still queued", n)
	}
	b.ReportMetric(float64(delivered.Load())/b.Elapsed().Seconds(), "msg/s")
	cancel()
	<-done
}
