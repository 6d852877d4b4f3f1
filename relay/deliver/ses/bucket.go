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
	return pace(ctx, b.reserve(time.Now(), n), func() { b.cancel(n) })
}

// pace waits d (the debt a reservation left) unless ctx ends first; then giveBack returns the tokens.
func pace(ctx context.Context, d time.Duration, giveBack func()) error {
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		giveBack()
		return ctx.Err()
	}
}

// SendRate shares the account's send rate between the instances on one store (relay/store's
// PostgreSQL implements it): one token bucket, in the store, for the fleet.
type SendRate interface {
	// ReserveRate takes n tokens (n < 0 gives them back) from the bucket named key — rate tokens a
	// second, at most burst held — and returns how long the caller must wait before using them.
	ReserveRate(ctx context.Context, key string, n, rate, burst float64) (time.Duration, error)
}

// pacer is what send waits on: the process's bucket, or the fleet's.
type pacer interface {
	wait(ctx context.Context, n float64) error
	perSecond() float64 // the configured rate
}

func (b *bucket) perSecond() float64 { return b.rate }

func (f *fleetBucket) perSecond() float64 { return f.per }

// fleetBucket is the fleet's token bucket, with bucket's rules (a second's worth of burst, debt repaid
// by waiting, tokens given back when the wait is abandoned).
type fleetBucket struct {
	rate SendRate
	key  string
	per  float64 // tokens per second
}

func (f *fleetBucket) wait(ctx context.Context, n float64) error {
	burst := math.Max(1, f.per)
	d, err := f.rate.ReserveRate(ctx, f.key, n, f.per, burst)
	if err != nil {
		return err
	}
	return pace(ctx, d, func() {
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = f.rate.ReserveRate(gctx, f.key, -n, f.per, burst)
	})
}
