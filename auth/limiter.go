package auth

import (
	"container/list"
	"net/netip"
	"sync"
	"time"
)

// LimiterOptions configures the failed-AUTH limiter.
type LimiterOptions struct {
	// MaxFailures is how many failed AUTH attempts a client may make within Window; further attempts are
	// refused until the window that began with the first failure has passed. Default 5.
	MaxFailures int
	// Window is the counting period. Default 5 minutes.
	Window time.Duration
	// MaxClients bounds memory: at most this many client addresses are tracked; beyond it the oldest
	// windows are forgotten first. Default 65536.
	MaxClients int
	// Now is the clock; nil means time.Now. Injected so tests can move time.
	Now func() time.Time
}

// Limiter counts failed AUTH attempts per client address in fixed windows. A success does not reset the
// count: otherwise a holder of one valid account could interleave its own logins with guesses at others. IPv6 clients are counted per
// /64, the smallest network a single host usually holds, so rotating addresses inside it does not reset
// the count. Safe for concurrent use; memory is bounded by MaxClients.
type Limiter struct {
	o LimiterOptions

	mu      sync.Mutex
	clients map[netip.Addr]*list.Element
	order   *list.List // of *window, oldest start first
}

type window struct {
	key      netip.Addr
	start    time.Time
	failures int
}

// NewLimiter builds a limiter, filling defaults for zero options.
func NewLimiter(o LimiterOptions) *Limiter {
	if o.MaxFailures <= 0 {
		o.MaxFailures = 5
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
	return &Limiter{o: o, clients: make(map[netip.Addr]*list.Element), order: list.New()}
}

func limiterKey(addr netip.Addr) netip.Addr {
	addr = addr.Unmap()
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.Addr()
	}
	return addr
}

// expire drops windows that have ended; they sit at the front because windows are appended in start
// order. Called with mu held.
func (l *Limiter) expire(now time.Time) {
	for e := l.order.Front(); e != nil; e = l.order.Front() {
		w := e.Value.(*window)
		if now.Sub(w.start) < l.o.Window {
			return
		}
		l.order.Remove(e)
		delete(l.clients, w.key)
	}
}

// Allow reports whether addr may attempt AUTH now.
func (l *Limiter) Allow(addr netip.Addr) bool {
	now := l.o.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(now)
	e := l.clients[limiterKey(addr)]
	return e == nil || e.Value.(*window).failures < l.o.MaxFailures
}

// Fail records a failed AUTH attempt by addr.
func (l *Limiter) Fail(addr netip.Addr) {
	now := l.o.Now()
	key := limiterKey(addr)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expire(now)
	if e := l.clients[key]; e != nil {
		e.Value.(*window).failures++
		return
	}
	for l.order.Len() >= l.o.MaxClients {
		// Under a spray of addresses, forget the oldest windows first: the newest attackers are the
		// ones still active.
		w := l.order.Remove(l.order.Front()).(*window)
		delete(l.clients, w.key)
	}
	l.clients[key] = l.order.PushBack(&window{key: key, start: now, failures: 1})
}

// Len returns how many client addresses are tracked (for tests and diagnostics).
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.order.Len()
}
