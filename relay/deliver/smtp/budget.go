package smtp

import (
	"context"
	"strings"
	"sync"
	"time"
)

// Budgets holds the shaping state of every upstream identity — connection slots, the messages-per-minute
// and recipients-per-day windows, a quota pause — for the life of the process. Microsoft's limits (3
// connections per mailbox, 30 messages a minute, 10,000 recipients a day) belong to the mailbox, not to
// a Transport value: a configuration reload builds new Transports, and they must go on counting where
// the old ones stopped and share their connection slots while old attempts finish. cmd creates one
// Budgets per process and hands it to every Transport it builds (Options.Budgets).
type Budgets struct {
	mu    sync.Mutex
	m     map[string]*budget
	fleet *fleetState // nil: the budgets live in this process only (NewBudgets)
}

// NewBudgets returns an empty registry.
func NewBudgets() *Budgets { return &Budgets{m: map[string]*budget{}} }

// identity is whose limits they are: the configured server name and the mailbox (or user) it sends as.
func identity(o *Options) string {
	who := o.Mailbox
	if who == "" {
		who = o.Username
	}
	return o.Name + "\x00" + strings.ToLower(who)
}

// budget returns the identity's budget with o's limits in force (a reload may change them; what was
// counted stays counted).
func (r *Budgets) budget(o *Options) *budget {
	r.mu.Lock()
	b, ok := r.m[identity(o)]
	if !ok {
		b = &budget{users: map[string]int{}}
		if r.fleet != nil {
			// The store's key: readable, and free of the NUL that separates the in-memory key.
			who := o.Mailbox
			if who == "" {
				who = o.Username
			}
			b.fleet = &fleetBudget{fleetState: r.fleet, b: b, identity: o.Name + "/" + strings.ToLower(who), leases: map[int64]struct{}{}, lost: map[int64]struct{}{}}
		}
		r.m[identity(o)] = b
	}
	r.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.perMinute = b.perMinute.resized(o.MessagesPerMinute, time.Minute)
	b.perDay = b.perDay.resized(o.RecipientsPerDay, 24*time.Hour)
	b.limit = o.MaxConnections
	b.handOver()
	return b
}

// budget is one identity's shaping state and its pool of idle sessions. Its slots are a semaphore whose
// size a reload may change: waiters are served in arrival order, and after a reduction releases only
// shrink the count until it is under the new limit. A delivery holds a slot while it uses a session and
// dials only when the pool is empty, so open connections (busy + idle) never exceed the slots.
type budget struct {
	mu          sync.Mutex
	limit, used int             // connection slots
	waiters     []chan struct{} // closed when a slot is handed over, oldest first
	perMinute   *window
	perDay      *window
	pausedUntil time.Time
	idle        []*session     // set-up sessions not in use, most recently used last
	users       map[string]int // open Transports by fingerprint: the last one to close ends their sessions
	fleet       *fleetBudget   // nil: slots and windows are this process's alone
}

// acquire takes a connection slot, waiting in line until one is free or ctx ends.
func (b *budget) acquire(ctx context.Context) error {
	b.mu.Lock()
	if b.used < b.limit && len(b.waiters) == 0 {
		b.used++
		b.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	b.waiters = append(b.waiters, ch)
	b.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		for i, w := range b.waiters {
			if w == ch {
				b.waiters = append(b.waiters[:i], b.waiters[i+1:]...)
				b.mu.Unlock()
				return ctx.Err()
			}
		}
		b.mu.Unlock()
		b.release() // handed over just as ctx ended: give it back
		return ctx.Err()
	}
}

// release gives a slot back, to the longest waiter when the limit allows.
func (b *budget) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.used--
	b.handOver()
}

// handOver gives free slots to waiters; b.mu is held.
func (b *budget) handOver() {
	for b.used < b.limit && len(b.waiters) > 0 {
		close(b.waiters[0])
		b.waiters = b.waiters[1:]
		b.used++
	}
}

// resized returns w with a new limit, keeping what it counted; nil (no limit) when limit ≤ 0.
func (w *window) resized(limit int, span time.Duration) *window {
	switch {
	case limit <= 0:
		return nil
	case w == nil:
		return newWindow(limit, span)
	}
	w.limit = limit
	return w
}
