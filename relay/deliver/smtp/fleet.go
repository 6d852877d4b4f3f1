package smtp

import (
	"context"
	"crypto/rand"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/internal/shaping"
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
//   - Fair share: while another instance waits for a slot, each instance may keep only its share of
//     the slots (the limit divided among the instances holding or wanting them, rounded up); above
//     it, an instance closes idle connections at once and more as they become idle, so an idle pool
//     never starves a busy peer, and instances that all stay busy settle on their shares instead of
//     reconnecting for every message.
type Fleet interface {
	// AcquireLease takes one of limit slots of identity for holder (this process) for ttl; ok is false
	// when all are taken (the caller polls, and the refusal records the holder's demand).
	AcquireLease(ctx context.Context, identity, holder string, limit int, ttl time.Duration) (lease int64, ok bool, err error)
	// RenewLeases extends the holder's leases of identity by ttl and returns its share — how many
	// slots it may keep (limit when no other holder waits) — and the leases that had lapsed meanwhile
	// (the store was unreachable for longer than ttl): their connections must close.
	RenewLeases(ctx context.Context, identity, holder string, leases []int64, limit int, ttl time.Duration) (share int, lost []int64, err error)
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
	r.fleet = &fleetState{f: f, o: o, stop: make(chan struct{}), holder: rand.Text()}
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
	f      Fleet
	o      FleetOptions
	holder string // this process, in the fleet's lease and demand rows
	stop   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

// fleetBudget is a budget's part of the fleet: the leases this process holds for the identity.
type fleetBudget struct {
	*fleetState
	identity string
	b        *budget    // whose idle sessions are closed when another instance waits
	asking   sync.Mutex // one delivery at a time asks the fleet for a slot
	mu       sync.Mutex
	leases   map[int64]struct{}
	lost     map[int64]struct{} // leases that lapsed under open connections, which close
	share    int                // slots this process may keep; 0 until the first renewal (no cap)
	renewing bool
}

// lease takes a fleet slot for a new connection, polling until one is free or ctx ends.
func (b *budget) lease(ctx context.Context) (int64, error) {
	fb := b.fleet
	if fb == nil {
		return 0, nil
	}
	fb.asking.Lock()
	defer fb.asking.Unlock()
	limit := b.slots.Limit()
	for {
		id, ok, err := fb.f.AcquireLease(ctx, fb.identity, fb.holder, limit, fb.o.LeaseTime)
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
		// At its share already, this process asks at the demand's pace: a slot comes only when
		// another instance lets one go, and asking ten times a second would only load the store.
		poll := fb.o.LeasePoll
		fb.mu.Lock()
		if fb.share > 0 && len(fb.leases) >= fb.share {
			poll = fb.o.DemandPoll
		}
		fb.mu.Unlock()
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(poll):
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
	delete(fb.lost, id)
	fb.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := fb.f.ReleaseLease(ctx, fb.identity, id); err != nil {
		fb.o.Logger.Warn("fleet connection slot not released; it lapses with its lease", "err", err)
	}
}

// mustClose reports whether a connection that becomes idle is to be closed rather than pooled: this
// process holds more slots than its share, or the connection's lease lapsed.
func (b *budget) mustClose(s *session) bool {
	if b.fleet == nil {
		return false
	}
	b.fleet.mu.Lock()
	defer b.fleet.mu.Unlock()
	_, lost := b.fleet.lost[s.lease]
	return lost || b.fleet.share > 0 && len(b.fleet.leases) > b.fleet.share
}

// renew extends the identity's leases every LeaseTime/3 and asks for this process's share every
// DemandPoll while the registry lives. While others wait, idle connections above the share are closed
// at once (and later ones as they become idle), and so is any connection idle for a whole DemandPoll:
// no idle pool holds a slot a waiting peer could use.
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
		limit := fb.b.slots.Limit()
		ctx, cancel := context.WithTimeout(context.Background(), fb.o.LeaseTime/3)
		share, lost, err := fb.f.RenewLeases(ctx, fb.identity, fb.holder, ids, limit, fb.o.LeaseTime)
		cancel()
		if err != nil {
			fb.o.Logger.Warn("fleet connection slots not renewed", "err", err)
			continue
		}
		if ids != nil {
			renewed = time.Now()
		}
		fb.mu.Lock()
		fb.share = share
		for _, id := range lost {
			delete(fb.leases, id)
			fb.lost[id] = struct{}{}
		}
		over := len(fb.leases) - share
		fb.mu.Unlock()
		if len(lost) > 0 {
			fb.o.Logger.Warn("fleet connection slots lapsed while the store was unreachable; their connections close", "count", len(lost))
			fb.b.closeLost()
		}
		if over > 0 {
			fb.b.closeIdle(over, time.Now())
		}
		if share < limit {
			// Others wait: a connection idle since the last poll is not this process's to keep,
			// even within its share (one that is busy between messages is reused within
			// milliseconds and stays).
			fb.b.closeIdle(limit, time.Now().Add(-fb.o.DemandPoll))
		}
	}
}

// closeLost ends the pooled sessions whose lease lapsed.
func (b *budget) closeLost() {
	b.fleet.mu.Lock()
	lost := maps.Clone(b.fleet.lost)
	b.fleet.mu.Unlock()
	b.mu.Lock()
	var gone, keep []*session
	for _, s := range b.idle {
		if _, ok := lost[s.lease]; ok {
			gone = append(gone, s)
		} else {
			keep = append(keep, s)
		}
	}
	b.idle = keep
	b.mu.Unlock()
	b.end(gone)
}

// closeIdle ends up to n pooled sessions pooled before cutoff, least recently used first, giving their
// slots back.
func (b *budget) closeIdle(n int, cutoff time.Time) {
	b.mu.Lock()
	k := 0
	for k < len(b.idle) && k < n && b.idle[k].pooledAt.Before(cutoff) {
		k++
	}
	idle := b.idle[:k:k]
	b.idle = b.idle[k:]
	b.mu.Unlock()
	b.end(idle)
}

// end closes sessions taken out of the pool and gives their slots back.
func (b *budget) end(idle []*session) {
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

// reserveRecipients admits up to n recipients of the day's budget: from the fleet's counter when there
// is one, else from this process's window. It returns how many, the stamp to refund them by and, when
// fewer than n were admitted, how long until the rest could be.
func (b *budget) reserveRecipients(ctx context.Context, n int) (granted int, stamp int64, retryAfter time.Duration, err error) {
	b.mu.Lock()
	limit := b.perDay
	b.mu.Unlock()
	if b.fleet == nil || limit <= 0 {
		g, s, r := b.limits.ReserveRecipients(n, time.Now())
		return g, s, r, nil
	}
	granted, stamp, retryAfter, err = b.fleet.f.Reserve(ctx, b.fleet.identity, "day", n, limit, 24*time.Hour)
	if err != nil {
		return 0, 0, 0, fleetWindowError(err)
	}
	return granted, stamp, retryAfter, nil
}

// waitMessage takes one message from the per-minute budget, waiting up to maxWait (never past ctx's
// deadline): ok is false, with the wait until room, when that is longer (see shaping.Limits).
func (b *budget) waitMessage(ctx context.Context, maxWait time.Duration) (stamp int64, wait time.Duration, ok bool, err error) {
	b.mu.Lock()
	limit := b.perMinute
	b.mu.Unlock()
	if b.fleet == nil || limit <= 0 {
		return b.limits.WaitMessage(ctx, maxWait)
	}
	return shaping.Wait(ctx, maxWait, func() (bool, int64, time.Duration, error) {
		g, stamp, wait, err := b.fleet.f.Reserve(ctx, b.fleet.identity, "minute", 1, limit, time.Minute)
		if err != nil {
			return false, 0, 0, fleetWindowError(err)
		}
		return g == 1, stamp, wait, nil
	})
}

// refund gives back what was reserved for a message that was not sent: rcpts recipients of the day
// (reserved at dayStamp) and, when minuteStamp is not 0, its place in the minute.
func (b *budget) refund(rcpts int, dayStamp, minuteStamp int64) {
	if b.fleet == nil {
		b.limits.Refund(rcpts, dayStamp, minuteStamp)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b.mu.Lock()
	day, minute := b.perDay, b.perMinute
	b.mu.Unlock()
	unreserve := func(window string, n int, stamp int64) {
		if n <= 0 || stamp == 0 {
			return
		}
		if err := b.fleet.f.Unreserve(ctx, b.fleet.identity, window, n, stamp); err != nil {
			b.fleet.o.Logger.Warn("fleet rate window not refunded; the events count until they leave the window", "window", window, "err", err)
		}
	}
	if day > 0 {
		unreserve("day", rcpts, dayStamp)
	}
	if minute > 0 {
		unreserve("minute", 1, minuteStamp)
	}
}

func fleetWindowError(err error) error {
	return &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal,
		Msg: "the fleet's rate windows are unavailable", Err: err}
}
