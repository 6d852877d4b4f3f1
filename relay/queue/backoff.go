package queue

import (
	"math"
	"math/rand/v2"
	"time"
)

// Backoff is the retry schedule for temporary failures. Either Schedule lists the delays after the
// first, second, ... failed attempt (the last one repeats), or the delay grows from Initial by Factor
// up to Max. Jitter spreads each delay uniformly over ±Jitter of itself, so messages deferred together
// by one upstream outage do not all come back in the same second.
//
// RFC 5321 §4.5.4.1 suggests retry intervals of at least 30 minutes; the defaults retry sooner at
// first (as Postfix does, 5 minutes) because a contact center's reply is time-sensitive and the usual
// upstream is one smart host, not a stranger's MX.
type Backoff struct {
	Initial  time.Duration // default 5m
	Max      time.Duration // default 1h
	Factor   float64       // default 2
	Jitter   float64       // fraction in [0, 1); default 0.2; negative disables jitter
	Schedule []time.Duration
}

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = 5 * time.Minute
	}
	if b.Max <= 0 {
		b.Max = time.Hour
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.Factor < 1 {
		b.Factor = 2
	}
	// A negative Jitter is kept as it is (no jitter), so defaulting twice never turns it back on.
	switch {
	case b.Jitter == 0:
		b.Jitter = 0.2
	case b.Jitter >= 1:
		b.Jitter = 0.99
	}
	return b
}

// base is the delay after the n-th failed attempt (n ≥ 1), before jitter.
func (b Backoff) base(n int) time.Duration {
	if n < 1 {
		n = 1
	}
	if len(b.Schedule) > 0 {
		return b.Schedule[min(n, len(b.Schedule))-1]
	}
	d := float64(b.Initial) * math.Pow(b.Factor, float64(n-1))
	if d >= float64(b.Max) || math.IsInf(d, 0) || math.IsNaN(d) {
		return b.Max
	}
	return time.Duration(d)
}

// Delay is the jittered wait after the n-th failed attempt: within [base·(1−Jitter), base·(1+Jitter)].
// Zero fields take their defaults.
func (b Backoff) Delay(n int) time.Duration {
	b = b.withDefaults()
	d := b.base(n)
	if b.Jitter <= 0 || d <= 0 {
		return d
	}
	f := 1 + b.Jitter*(2*rand.Float64()-1)
	return time.Duration(float64(d) * f)
}
