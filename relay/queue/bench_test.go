package queue

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
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

// BenchmarkLargeBodyStall measures what a 40 MB commit does to the small commits made while it is
// written and synced, with the large body in a file of its own (the default LargeMessageBytes) and,
// for comparison, in the segment with the small ones (where the small commits share its fdatasync).
// Per iteration: one 40 MB commit and, at the same time, small commits from 4 goroutines until it is
// done; reported are the small commits' median and worst latency and the large commit's time.
func BenchmarkLargeBodyStall(b *testing.B) {
	large := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:-_+*\r\n"), 40_000_000/72)
	for _, c := range []struct {
		name              string
		segment, largeMsg int64
	}{
		{"own-file", 64 << 20, 1 << 20},
		{"in-segment", 256 << 20, 64 << 20},
	} {
		b.Run(c.name, func(b *testing.B) {
			q, err := New(Options{
				Dir: b.TempDir(), Transports: TransportMap{}, Metrics: metrics.New(prometheus.NewRegistry()),
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), SegmentBytes: c.segment, LargeMessageBytes: c.largeMsg,
			})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			var lat []time.Duration
			var bigTotal time.Duration
			for range b.N {
				done := make(chan struct{})
				var mu sync.Mutex
				var wg sync.WaitGroup
				for range 4 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							select {
							case <-done:
								return
							default:
							}
							t := time.Now()
							benchCommit(b, q)
							mu.Lock()
							lat = append(lat, time.Since(t))
							mu.Unlock()
						}
					}()
				}
				t := time.Now()
				d, err := q.Create()
				if err != nil {
					b.Fatal(err)
				}
				for off := 0; off < len(large); off += 32 << 10 {
					d.Write(large[off:min(off+32<<10, len(large))])
				}
				if _, err := d.Commit(context.Background(), relay.Envelope{Transport: "upstream", Recipients: []string{"r@example.net"}}); err != nil {
					b.Fatal(err)
				}
				bigTotal += time.Since(t)
				close(done)
				wg.Wait()
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "small-p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "small-p99-µs")
			b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "small-max-µs")
			b.ReportMetric(float64(bigTotal.Milliseconds())/float64(b.N), "large-ms")
		})
	}
}

// BenchmarkDiskAmplification runs 10 KiB messages through the queue with one in ten deferred for good,
// 4 MiB segments, and reports the spool's bytes on disk over the bytes its live entries need at the end,
// and the worst, over samples after each compaction round, of what the disk holds beyond twice the
// live bytes, in segments (the bound: two, plus the one written and the one made ahead).
func BenchmarkDiskAmplification(b *testing.B) {
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		if m.Recipients[0] == "later@example.net" {
			return relay.Failed(1, relay.Errorf(451, "4.2.1", "", "later"))
		}
		return relay.Result{Errs: make([]error, len(m.Recipients))}
	})}
	q, err := New(Options{
		Dir: b.TempDir(), Transports: tr, Metrics: metrics.New(prometheus.NewRegistry()),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), SegmentBytes: 4 << 20,
		Retry: Backoff{Schedule: []time.Duration{time.Hour}, Jitter: -1},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	worst := 0.0
	for i := range b.N {
		rcpt := "now@example.net"
		if i%10 == 0 {
			rcpt = "later@example.net"
		}
		d, _ := q.Create()
		d.Write(body10k)
		if _, err := d.Commit(context.Background(), relay.Envelope{Transport: "upstream", Recipients: []string{rcpt}}); err != nil {
			b.Fatal(err)
		}
		if i%500 == 499 {
			q.spool.flush()
			q.compact()
			q.spool.flush()
			q.spool.reclaim()
			disk, live, _ := q.spool.usage()
			worst = max(worst, float64(disk-2*live)/float64(4<<20))
		}
	}
	disk, live, segs := q.spool.usage()
	b.ReportMetric(float64(disk)/float64(max(live, 1)), "disk/live")
	b.ReportMetric(worst, "worst-excess-segments")
	b.ReportMetric(float64(segs), "segments")
}
