package ses

import (
	"context"
	"math"
	"sync"
	"time"
)

// bucket is a token bucket shared by every queue worker: rate tokens a second, holding at most one
// second's worth (so an idle period does not allow a burst above SES's per-second limit). A caller
// takes its tokens at once and, when that leaves the bucket in debt, sleeps until the debt is repaid:
// requests are served in arrival order and a 50-recipient call larger than the bucket still goes
// through, at the right pace.
type bucket struct {
	rate  float64 // tokens per second
	burst float64

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func newBucket(rate float64) *bucket {
	burst := math.Max(1, rate)
	return &bucket{rate: rate, burst: burst, tokens: burst}
}

// reserve takes n tokens at now and returns how long the caller must wait before using them.
func (b *bucket) reserve(now time.Time, n float64) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.last.IsZero() && now.After(b.last) {
		b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	if now.After(b.last) {
		b.last = now
	}
	b.tokens -= n
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

// cancel gives back n tokens a caller reserved but will not use.
func (b *bucket) cancel(n float64) {
	b.mu.Lock()
	b.tokens = math.Min(b.burst, b.tokens+n)
	b.mu.Unlock()
}

// wait blocks until n tokens are available or ctx ends.
func (b *bucket) wait(ctx context.Context, n float64) error {
	d := b.reserve(time.Now(), n)
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		b.cancel(n)
		return ctx.Err()
	}
}
