// Package shaping holds the sending limits a transport keeps for one upstream identity (a Microsoft
// 365 mailbox, say): rolling windows that count messages or recipients, and a resizable connection or
// request semaphore. The SMTP and the Graph transports shape with the same parts, so Exchange Online's
// limits (30 messages a minute, 10,000 recipients a day) are counted the same way on either protocol.
//
// Limits puts the windows together with a quota pause and the wait-or-defer rule both transports follow
// (wait up to a short maximum for the per-minute window, else defer with RetryAfter). None of it is
// tied to a Transport value: the transports keep their budgets in a Registry that outlives a
// configuration reload, so a rebuilt transport goes on counting where the old one stopped.
package shaping

import (
	"sort"
	"time"
)

// Window counts events (messages or recipients) in a rolling span, in 60 buckets of span/60, so that a
// limit like Exchange Online's "10,000 recipients in any 24 hours" is enforced without remembering each
// event. It errs on the safe side: an event is counted until its whole bucket has left the span. A nil
// *Window is "no limit". A Window is not safe for concurrent use: callers hold their own lock.
type Window struct {
	limit   int
	slot    time.Duration
	buckets [windowBuckets]bucket
}

const windowBuckets = 60

type bucket struct {
	k int64 // slot number (unix time / slot) this bucket counts
	n int
}

func NewWindow(limit int, span time.Duration) *Window {
	if limit <= 0 {
		return nil
	}
	return &Window{limit: limit, slot: span / windowBuckets}
}

func (w *Window) slotOf(t time.Time) int64 { return t.UnixNano() / int64(w.slot) }

func (w *Window) live(b bucket, cur int64) bool {
	return b.n > 0 && b.k > cur-windowBuckets && b.k <= cur
}

// Used is the number of events counted in the span ending at now.
func (w *Window) Used(now time.Time) int {
	cur, n := w.slotOf(now), 0
	for _, b := range w.buckets {
		if w.live(b, cur) {
			n += b.n
		}
	}
	return n
}

// Reserve admits up to n events at now. It returns how many were admitted (counted in now's bucket,
// which stamp identifies for release) and, when fewer than n were, how long until the rest could be.
func (w *Window) Reserve(n int, now time.Time) (granted int, stamp int64, retryAfter time.Duration) {
	if w == nil {
		return n, 0, 0
	}
	cur := w.slotOf(now)
	granted = min(n, max(0, w.limit-w.Used(now)))
	if granted > 0 {
		b := &w.buckets[cur%windowBuckets]
		if b.k != cur {
			*b = bucket{k: cur}
		}
		b.n += granted
	}
	if granted < n {
		retryAfter = w.FreeIn(n-granted, now)
	}
	return granted, cur, retryAfter
}

// Release gives back n events reserved at stamp (nothing was sent for them), if their bucket is still
// in the window.
func (w *Window) Release(n int, stamp int64) {
	if w == nil || n <= 0 {
		return
	}
	b := &w.buckets[stamp%windowBuckets]
	if b.k == stamp {
		b.n = max(0, b.n-n)
	}
}

// FreeIn is how long until need more events fit (at least one slot's worth of waiting when the window
// is full; 0 when they already fit). need larger than the limit is capped at the limit.
func (w *Window) FreeIn(need int, now time.Time) time.Duration {
	if w == nil {
		return 0
	}
	cur := w.slotOf(now)
	over := w.Used(now) + min(need, w.limit) - w.limit
	if over <= 0 {
		return 0
	}
	var live []bucket
	for _, b := range w.buckets {
		if w.live(b, cur) {
			live = append(live, b)
		}
	}
	sort.Slice(live, func(i, j int) bool { return live[i].k < live[j].k })
	freed := 0
	for _, b := range live {
		freed += b.n
		if freed >= over {
			return w.expiry(b, now)
		}
	}
	return w.slot
}

// OldestExpiry is how long until the oldest counted event leaves the window (0 if none is counted):
// when a quota reply says the upstream's own window is full, this is when room appears in ours.
func (w *Window) OldestExpiry(now time.Time) time.Duration {
	if w == nil {
		return 0
	}
	cur := w.slotOf(now)
	var oldest *bucket
	for i := range w.buckets {
		b := &w.buckets[i]
		if w.live(*b, cur) && (oldest == nil || b.k < oldest.k) {
			oldest = b
		}
	}
	if oldest == nil {
		return 0
	}
	return w.expiry(*oldest, now)
}

// expiry is when bucket b's events stop counting: at the start of slot b.k+windowBuckets.
func (w *Window) expiry(b bucket, now time.Time) time.Duration {
	end := time.Unix(0, (b.k+windowBuckets)*int64(w.slot))
	return max(end.Sub(now), time.Millisecond)
}

// Resized returns w with a new limit, keeping what it counted; nil (no limit) when limit ≤ 0. A reload
// that changes a limit must not forget what was sent under the old one.
func (w *Window) Resized(limit int, span time.Duration) *Window {
	switch {
	case limit <= 0:
		return nil
	case w == nil:
		return NewWindow(limit, span)
	}
	w.limit = limit
	return w
}
