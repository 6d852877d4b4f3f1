package smtp

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// Fleet keeps an identity's budget where every instance sharing a store sees it (relay/store's
// PostgreSQL implements it). Without one (NewBudgets) the budget lives in this process only.
//
//   - Connection slots are leases with an expiry: one per open connection (in use or idle in the pool),
//     renewed while the connection lives and given back when it closes, so the fleet never has more
//     connections open to a mailbox than MaxConnections; a crashed instance's leases lapse after the
//     lease time and their slots come back.
//   - The per-minute and per-day windows are shared counters in the same buckets as window (60 per
//     span); a reservation is all-or-part, like window.reserve.
//   - Contended tells an instance that another one is waiting for a slot: it then closes connections
//     as they become idle instead of pooling them, so an idle pool never starves a busy peer.
type Fleet interface {
	// AcquireLease takes one of limit slots of identity for ttl; ok is false when all are taken (the
	// caller polls, and the failed attempt marks the identity contended).
	AcquireLease(ctx context.Context, identity string, limit int, ttl time.Duration) (lease int64, ok bool, err error)
	// RenewLeases extends this process's leases of identity by ttl and reports whether another
	// instance is waiting for a slot.
	RenewLeases(ctx context.Context, identity string, leases []int64, ttl time.Duration) (contended bool, err error)
	// ReleaseLease gives a slot back.
	ReleaseLease(ctx context.Context, identity string, lease int64) error
	// Reserve admits up to n events of identity's window (name, span) under limit, returning how many
	// were admitted, the bucket they were counted in (for Unreserve) and, when fewer than n were, how
	// long until the rest could be.
	Reserve(ctx context.Context, identity, window string, n, limit int, span time.Duration) (granted int, bucket int64, retryAfter time.Duration, err error)
	// Unreserve gives back n events counted in bucket (nothing was sent for them).
	Unreserve(ctx context.Context, identity, window string, n int, bucket int64) error
}

// FleetOptions tune NewFleetBudgets.
type FleetOptions struct {
	// LeaseTime is how long a slot outlives its holder's last renewal (default 30s): the time a
	// crashed instance's connections keep their slots. Leases are renewed every LeaseTime/3.
	LeaseTime time.Duration
	// LeasePoll is how often a delivery waiting for a slot asks again (default 100ms); one delivery
	// per identity and process asks, the others wait behind it.
	LeasePoll time.Duration
	// DemandPoll is how often a process holding slots asks whether another waits for one (default 1s):
	// it then closes its idle connections.
	DemandPoll time.Duration
	Logger     *slog.Logger // default: discard
}

// NewFleetBudgets returns a registry whose slots and windows are kept by f, shared by every instance
// on the same store. The connection pool and the quota pause stay per process.
func NewFleetBudgets(f Fleet, o FleetOptions) *Budgets {
	if o.LeaseTime <= 0 {
		o.LeaseTime = 30 * time.Second
	}
	if o.LeasePoll <= 0 {
		o.LeasePoll = 100 * time.Millisecond
	}
	if o.DemandPoll <= 0 {
		o.DemandPoll = time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	r := NewBudgets()
	r.fleet = &fleetState{f: f, o: o, stop: make(chan struct{})}
	return r
}

// Close stops the lease renewals of a fleet registry (its leases then lapse); a no-op otherwise.
func (r *Budgets) Close() {
	if r.fleet != nil {
		r.fleet.once.Do(func() { close(r.fleet.stop) })
		r.fleet.wg.Wait()
	}
}

type fleetState struct {
	f    Fleet
	o    FleetOptions
	stop chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

// fleetBudget is a budget's part of the fleet: the leases this process holds for the identity.
type fleetBudget struct {
	*fleetState
	identity  string
	b         *budget    // whose idle sessions are closed when another instance waits
	asking    sync.Mutex // one delivery at a time asks the fleet for a slot
	mu        sync.Mutex
	leases    map[int64]struct{}
	contended bool
	renewing  bool
}

// lease takes a fleet slot for a new connection, polling until one is free or ctx ends.
func (b *budget) lease(ctx context.Context) (int64, error) {
	fb := b.fleet
	if fb == nil {
		return 0, nil
	}
	fb.asking.Lock()
	defer fb.asking.Unlock()
	b.mu.Lock()
	limit := b.limit
	b.mu.Unlock()
	for {
		id, ok, err := fb.f.AcquireLease(ctx, fb.identity, limit, fb.o.LeaseTime)
		if err != nil {
			return 0, &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal,
				Msg: "the fleet's connection slots are unavailable", Err: err}
		}
		if ok {
			fb.mu.Lock()
			fb.leases[id] = struct{}{}
			if !fb.renewing {
				fb.renewing = true
				fb.wg.Add(1)
				go fb.renew()
			}
			fb.mu.Unlock()
			return id, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(fb.o.LeasePoll):
		}
	}
}

// unlease gives a connection's slot back to the fleet.
func (b *budget) unlease(id int64) {
	fb := b.fleet
	if fb == nil || id == 0 {
		return
	}
	fb.mu.Lock()
	delete(fb.leases, id)
	fb.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := fb.f.ReleaseLease(ctx, fb.identity, id); err != nil {
		fb.o.Logger.Warn("fleet connection slot not released; it lapses with its lease", "err", err)
	}
}

// contended reports whether another instance waits for a slot (then idle connections are closed).
func (b *budget) contended() bool {
	if b.fleet == nil {
		return false
	}
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	return b.fleet.contended
}

// renew extends the identity's leases every LeaseTime/3 and asks for the demand every DemandPoll while
// the registry lives; when another instance waits, the idle connections are closed at once (and later
// ones as they become idle), so no idle pool holds a slot a busy peer needs.
func (fb *fleetBudget) renew() {
	defer fb.wg.Done()
	tick := time.NewTicker(min(fb.o.DemandPoll, fb.o.LeaseTime/3))
	defer tick.Stop()
	renewed := time.Now()
	for {
		select {
		case <-fb.stop:
			return
		case <-tick.C:
		}
		var ids []int64
		if time.Since(renewed) >= fb.o.LeaseTime/3 {
			fb.mu.Lock()
			for id := range fb.leases {
				ids = append(ids, id)
			}
			fb.mu.Unlock()
		}
		ctx, cancel := context.WithTimeout(context.Background(), fb.o.LeaseTime/3)
		contended, err := fb.f.RenewLeases(ctx, fb.identity, ids, fb.o.LeaseTime)
		cancel()
		if err != nil {
			fb.o.Logger.Warn("fleet connection slots not renewed", "err", err)
			continue
		}
		if ids != nil {
			renewed = time.Now()
		}
		fb.mu.Lock()
		fb.contended = contended
		fb.mu.Unlock()
		if contended {
			fb.b.closeIdle()
		}
	}
}

// closeIdle ends every pooled session, giving its slot back to the fleet.
func (b *budget) closeIdle() {
	b.mu.Lock()
	idle := b.idle
	b.idle = nil
	b.mu.Unlock()
	for _, s := range idle {
		s.timer.Stop()
		if s.c != nil {
			s.c.CommandTimeout = min(s.c.CommandTimeout, 5*time.Second)
			if s.c.Quit() != nil {
				s.c.Close()
			}
		}
		b.unlease(s.lease)
	}
}

// reserveWindow admits up to n events of w (the per-minute or per-day window): from the fleet's
// counter when there is one (mirrored into w, which the quota pause reads), else from w alone.
func (b *budget) reserveWindow(ctx context.Context, w **window, name string, n int) (granted int, stamp int64, retryAfter time.Duration, err error) {
	b.mu.Lock()
	local := *w
	if b.fleet == nil || local == nil {
		defer b.mu.Unlock()
		g, s, r := local.reserve(n, time.Now())
		return g, s, r, nil
	}
	limit, span := local.limit, local.slot*windowBuckets
	b.mu.Unlock()
	granted, stamp, retryAfter, err = b.fleet.f.Reserve(ctx, b.fleet.identity, name, n, limit, span)
	if err != nil {
		return 0, 0, 0, &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal,
			Msg: "the fleet's rate windows are unavailable", Err: err}
	}
	if granted > 0 {
		b.mu.Lock()
		local.count(granted, stamp)
		b.mu.Unlock()
	}
	return granted, stamp, retryAfter, nil
}

// unreserveWindow gives back n events reserved at stamp.
func (b *budget) unreserveWindow(w *window, name string, n int, stamp int64) {
	if w == nil || n <= 0 {
		return
	}
	b.mu.Lock()
	w.release(n, stamp)
	b.mu.Unlock()
	if b.fleet == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.fleet.f.Unreserve(ctx, b.fleet.identity, name, n, stamp); err != nil {
		b.fleet.o.Logger.Warn("fleet rate window not refunded; the events count until they leave the window", "window", name, "err", err)
	}
}

// count records n events in bucket stamp without a limit check (the fleet admitted them).
func (w *window) count(n int, stamp int64) {
	b := &w.buckets[stamp%windowBuckets]
	if b.k != stamp {
		*b = bucket{k: stamp}
	}
	b.n += n
}
