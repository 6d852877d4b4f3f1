package auth

import (
	"container/list"
	"context"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// LimiterOptions configures the failed-AUTH limiter.
type LimiterOptions struct {
	// MaxFailures is how many failed password checks one login may have from one client within Window;
	// further checks are refused until the window that began with the first failure has passed.
	// Default 5.
	MaxFailures int
	// MaxClientFailures is the ceiling over all logins from one client address: an application server
	// behind which many agents work is not locked out by one agent's wrong password, yet cannot guess
	// at many logins either. Default 4 × MaxFailures.
	MaxClientFailures int
	// Window is the counting period. Default 5 minutes.
	Window time.Duration
	// MaxClients bounds memory: at most this many (client) and (client, login) counters are kept;
	// beyond it the oldest windows are forgotten first. Default 65536.
	MaxClients int
	// Now is the clock; nil means time.Now. Injected so tests can move time.
	Now func() time.Time
}

// Limiter counts failed password checks per (client address, login) and per client address in fixed
// windows. A check is reserved with Begin before the password is verified and counts against both
// limits while it is in flight, so a client that stages many AUTH exchanges and sends all their
// passwords at once (or in parallel connections) gets no more real checks than the limit: the checks
// beyond it wait for those in flight and are refused if they failed.
//
// A success does not reset the count: otherwise a holder of one valid account could interleave its own
// logins with guesses at others. IPv6 clients are counted per /64, the smallest network a single host
// usually holds, so rotating addresses inside it does not reset the count. Safe for concurrent use;
// memory is bounded by MaxClients.
type Limiter struct {
	o LimiterOptions

	mu      sync.Mutex
	buckets map[bucketKey]*list.Element
	order   *list.List    // of *window, oldest start first
	ended   chan struct{} // closed (and replaced) whenever a check in flight ends
}

// bucketKey names one counter: a client's (login "") or one login's from that client.
type bucketKey struct {
	client netip.Addr
	login  string
}

type window struct {
	key      bucketKey
	start    time.Time
	failures int
	inFlight int
}

// maxLoginKey bounds the bytes of a login kept as a key: logins are short, and a client must not make
// the limiter hold its 2000-byte lines.
const maxLoginKey = 256

// NewLimiter builds a limiter, filling defaults for zero options.
func NewLimiter(o LimiterOptions) *Limiter {
	if o.MaxFailures <= 0 {
		o.MaxFailures = 5
	}
	if o.MaxClientFailures <= 0 {
		o.MaxClientFailures = 4 * o.MaxFailures
	}
	if o.Window <= 0 {
		o.Window = 5 * time.Minute
	}
	if o.MaxClients <= 0 {
		o.MaxClients = 65536
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Limiter{o: o, buckets: make(map[bucketKey]*list.Element), order: list.New(), ended: make(chan struct{})}
}

func limiterKey(addr netip.Addr) netip.Addr {
	addr = addr.Unmap()
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.Addr()
	}
	return addr
}

func loginKey(login string) string {
	login = strings.ToLower(login)
	if len(login) > maxLoginKey {
		login = login[:maxLoginKey]
	}
	if login == "" {
		login = "\x00" // an empty login is a login of its own, not the client's counter
	}
	return login
}

// expire drops windows that have ended; they sit at the front because windows are appended in start
// order. A window with checks still in flight starts over instead, so their outcome is counted.
// Called with mu held.
func (l *Limiter) expire(now time.Time) {
	for e := l.order.Front(); e != nil; e = l.order.Front() {
		w := e.Value.(*window)
		if now.Sub(w.start) < l.o.Window {
			return
		}
		if w.inFlight > 0 {
			w.start, w.failures = now, 0
			l.order.MoveToBack(e)
			continue
		}
		l.order.Remove(e)
		delete(l.buckets, w.key)
	}
}

// get returns the window of key, creating it (and evicting the oldest beyond MaxClients) if needed.
// Called with mu held.
func (l *Limiter) get(key bucketKey, now time.Time) *window {
	if e := l.buckets[key]; e != nil {
		return e.Value.(*window)
	}
	for l.order.Len() >= l.o.MaxClients {
		// Under a spray of addresses, forget the oldest windows first: the newest attackers are the
		// ones still active. An Attempt in flight keeps its own pointer, so eviction is safe.
		w := l.order.Remove(l.order.Front()).(*window)
		delete(l.buckets, w.key)
	}
	w := &window{key: key, start: now}
	l.buckets[key] = l.order.PushBack(w)
	return w
}

// retryAfter is how long until w's window ends, at least a second.
func (l *Limiter) retryAfter(w *window, now time.Time) time.Duration {
	return max(time.Second, w.start.Add(l.o.Window).Sub(now).Round(time.Second))
}

// Allow reports whether addr may start an AUTH exchange at all (its failures have not reached the
// per-client ceiling); if not, it says how long until it may. Checks in flight do not count here:
// Begin decides about them.
func (l *Limiter) Allow(addr netip.Addr) (retry time.Duration, ok bool) {
	now := l.o.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(now)
	e := l.buckets[bucketKey{client: limiterKey(addr)}]
	if e == nil {
		return 0, true
	}
	w := e.Value.(*window)
	if w.failures < l.o.MaxClientFailures {
		return 0, true
	}
	return l.retryAfter(w, now), false
}

// Attempt is one password check reserved by Begin. Exactly one of Succeeded or Failed must be called.
type Attempt struct {
	l            *Limiter
	client, pair *window
}

// Begin reserves a password check of login from addr, before the password is verified. It refuses
// when the login's or the client's failures have reached their limit, and then says how long until
// the window ends. While failures plus checks in flight reach a limit, it waits (until ctx ends) for
// a check to end rather than refusing: a check in flight may well succeed, and an application server
// opening many connections with one account at once must not be refused for it. So failing checks
// never exceed the limits, and succeeding ones are only delayed by one check's time.
func (l *Limiter) Begin(ctx context.Context, addr netip.Addr, login string) (a *Attempt, retry time.Duration, ok bool) {
	client := limiterKey(addr)
	pair := bucketKey{client: client, login: loginKey(login)}
	for {
		now := l.o.Now()
		l.mu.Lock()
		l.expire(now)
		cw := l.get(bucketKey{client: client}, now)
		pw := l.get(pair, now)
		switch {
		case pw.failures >= l.o.MaxFailures:
			l.mu.Unlock()
			return nil, l.retryAfter(pw, now), false
		case cw.failures >= l.o.MaxClientFailures:
			l.mu.Unlock()
			return nil, l.retryAfter(cw, now), false
		case pw.failures+pw.inFlight < l.o.MaxFailures && cw.failures+cw.inFlight < l.o.MaxClientFailures:
			cw.inFlight++
			pw.inFlight++
			l.mu.Unlock()
			return &Attempt{l: l, client: cw, pair: pw}, 0, true
		}
		ended := l.ended
		l.mu.Unlock()
		select {
		case <-ended:
		case <-ctx.Done():
			return nil, time.Second, false
		}
	}
}

// Succeeded ends the check without counting a failure.
func (a *Attempt) Succeeded() { a.end(0) }

// Failed ends the check and counts it as a failure of the login and of the client.
func (a *Attempt) Failed() { a.end(1) }

func (a *Attempt) end(failures int) {
	a.l.mu.Lock()
	defer a.l.mu.Unlock()
	for _, w := range []*window{a.client, a.pair} {
		w.inFlight--
		w.failures += failures
	}
	close(a.l.ended)
	a.l.ended = make(chan struct{})
}

// Len returns how many counters are kept (for tests and diagnostics).
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.order.Len()
}
