package graph

import (
	"strings"
	"sync"
	"time"

	"github.com/mailgate/mailgate/relay/deliver/internal/shaping"
)

// Budgets holds the shaping state of every Graph mailbox — request slots, the messages-per-minute
// and recipients-per-day windows, a quota pause — for the life of the process, so a Transport rebuilt
// by a reload goes on counting where the old one stopped (as relay/deliver/smtp's Budgets do). cmd
// creates one per process and hands it to every Transport (Options.Budgets).
type Budgets struct {
	mu sync.Mutex
	m  map[string]*budget
}

// NewBudgets returns an empty registry.
func NewBudgets() *Budgets { return &Budgets{m: map[string]*budget{}} }

// budget is one mailbox's shaping state.
type budget struct {
	slots       shaping.Slots // requests in flight
	mu          sync.Mutex
	perMinute   *shaping.Window
	perDay      *shaping.Window
	pausedUntil time.Time
}

// budget returns the mailbox's budget with o's limits in force (what was counted stays counted).
func (r *Budgets) budget(o *Options) *budget {
	key := o.Name + "\x00" + strings.ToLower(o.Mailbox)
	r.mu.Lock()
	b, ok := r.m[key]
	if !ok {
		b = &budget{}
		r.m[key] = b
	}
	r.mu.Unlock()
	b.mu.Lock()
	b.perMinute = b.perMinute.Resized(o.MessagesPerMinute, time.Minute)
	b.perDay = b.perDay.Resized(o.RecipientsPerDay, 24*time.Hour)
	b.mu.Unlock()
	b.slots.SetLimit(o.MaxConcurrent)
	return b
}
