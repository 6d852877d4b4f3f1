package shaping

import (
	"context"
	"sync"
	"time"
)

// Limits are one identity's sending limits: messages in any rolling minute, recipients in any rolling
// 24 hours, and a pause after the upstream said its quota is used up. It is safe for concurrent use.
// The zero value limits nothing; Resize sets the limits.
type Limits struct {
	mu          sync.Mutex
	perMinute   *Window
	perDay      *Window
	pausedUntil time.Time
}

// Resize sets the limits (≤ 0: none), keeping what was counted: a reload that changes a limit must not
// forget what was sent under the old one.
func (l *Limits) Resize(messagesPerMinute, recipientsPerDay int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.perMinute = l.perMinute.Resized(messagesPerMinute, time.Minute)
	l.perDay = l.perDay.Resized(recipientsPerDay, 24*time.Hour)
}

// PausedFor is how long the identity stays paused after a quota answer, and until when (0: not paused).
func (l *Limits) PausedFor(now time.Time) (time.Duration, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return max(l.pausedUntil.Sub(now), 0), l.pausedUntil
}

// ReserveRecipients admits up to n recipients in the daily window; see Window.Reserve.
func (l *Limits) ReserveRecipients(n int, now time.Time) (granted int, stamp int64, retryAfter time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.perDay.Reserve(n, now)
}

// WaitMessage takes one message from the per-minute window, waiting for room up to maxWait (and never
// past ctx's deadline). A longer wait is not waited: ok is false and wait says how long until room, so
// the caller defers the message instead of parking a worker. err is ctx's when it ended meanwhile.
func (l *Limits) WaitMessage(ctx context.Context, maxWait time.Duration) (stamp int64, wait time.Duration, ok bool, err error) {
	return Wait(ctx, maxWait, func() (bool, int64, time.Duration, error) {
		l.mu.Lock()
		defer l.mu.Unlock()
		g, stamp, wait := l.perMinute.Reserve(1, time.Now())
		return g == 1, stamp, wait, nil
	})
}

// Wait calls reserve until it admits, sleeping between tries as long as reserve says room takes, up to
// maxWait (and never past ctx's deadline); a longer wait returns ok false with the wait, for the caller
// to defer. reserve's error ends the wait; so does ctx's.
func Wait(ctx context.Context, maxWait time.Duration, reserve func() (admitted bool, stamp int64, wait time.Duration, err error)) (stamp int64, wait time.Duration, ok bool, err error) {
	for {
		admitted, stamp, wait, err := reserve()
		if err != nil {
			return 0, 0, false, err
		}
		if admitted {
			return stamp, 0, true, nil
		}
		dl, hasDL := ctx.Deadline()
		if wait > maxWait || (hasDL && time.Now().Add(wait).After(dl)) {
			return 0, wait, false, nil
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return 0, 0, false, ctx.Err()
		}
	}
}

// Refund gives back what was reserved for a message that was not sent: rcpts recipients of the daily
// window (reserved at dayStamp) and, when minuteStamp is not 0, its place in the per-minute window.
func (l *Limits) Refund(rcpts int, dayStamp, minuteStamp int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.perDay.Release(rcpts, dayStamp)
	if minuteStamp != 0 {
		l.perMinute.Release(1, minuteStamp)
	}
}

// PauseForQuota pauses the identity after a quota answer until its daily window frees up — by the
// record of recipients sent, or for fallback when nothing was counted — and at least a minute. It
// returns the pause.
func (l *Limits) PauseForQuota(now time.Time, fallback time.Duration) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	wait := l.perDay.OldestExpiry(now)
	if wait <= 0 {
		wait = fallback
	}
	wait = max(wait, time.Minute)
	if until := now.Add(wait); until.After(l.pausedUntil) {
		l.pausedUntil = until
	}
	return wait
}

// Limit is a configured limit with its default applied: 0 takes def; a negative value (no limit) and
// any other value are kept.
func Limit(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// Duration is a configured duration with its default applied: zero or negative takes def.
func Duration(v, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return v
}
