package smtp

import (
	"context"
	"strings"
	"sync"

	"github.com/mailgate/mailgate/relay/deliver/internal/shaping"
)

// Budgets holds the shaping state of every upstream identity — connection slots, the messages-per-minute
// and recipients-per-day windows, a quota pause — for the life of the process. Microsoft's limits (3
// connections per mailbox, 30 messages a minute, 10,000 recipients a day) belong to the mailbox, not to
// a Transport value: a configuration reload builds new Transports, and they must go on counting where
// the old ones stopped and share their connection slots while old attempts finish. cmd creates one
// Budgets per process and hands it to every Transport it builds (Options.Budgets).
type Budgets struct {
	r     shaping.Registry[budget]
	fleet *fleetState // nil: the budgets live in this process only (NewBudgets)
}

// NewBudgets returns an empty registry.
func NewBudgets() *Budgets { return &Budgets{} }

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
	b := r.r.Get(identity(o), func() *budget {
		b := &budget{users: map[string]int{}}
		if r.fleet != nil {
			// The store's key: readable, and free of the NUL that separates the in-memory key.
			who := o.Mailbox
			if who == "" {
				who = o.Username
			}
			b.fleet = &fleetBudget{fleetState: r.fleet, b: b, identity: o.Name + "/" + strings.ToLower(who),
				leases: map[int64]struct{}{}, lost: map[int64]struct{}{}}
		}
		return b
	})
	b.limits.Resize(o.MessagesPerMinute, o.RecipientsPerDay)
	b.slots.SetLimit(o.MaxConnections)
	b.mu.Lock()
	b.perMinute, b.perDay = o.MessagesPerMinute, o.RecipientsPerDay
	b.mu.Unlock()
	return b
}

// budget is one identity's shaping state and its pool of idle sessions. A delivery holds one of its
// slots while it uses a session and dials only when the pool is empty, so open connections (busy +
// idle) never exceed the slots.
type budget struct {
	slots  shaping.Slots  // connection slots
	limits shaping.Limits // messages a minute, recipients a day, quota pause
	mu     sync.Mutex
	idle   []*session     // set-up sessions not in use, most recently used last
	users  map[string]int // open Transports by fingerprint: the last one to close ends their sessions
	// fleet, with a shared store: the connection slots are leases held by every open connection
	// across the instances, and the windows counters in the store (fleet.go); nil: this process's.
	fleet             *fleetBudget
	perMinute, perDay int // the limits in force, for the fleet's counters (≤ 0: none)
}

// acquire takes a connection slot, waiting in line until one is free or ctx ends.
func (b *budget) acquire(ctx context.Context) error { return b.slots.Acquire(ctx) }

// release gives a slot back.
func (b *budget) release() { b.slots.Release() }
