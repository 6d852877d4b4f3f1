package graph

import (
	"strings"

	"github.com/mailgate/mailgate/relay/deliver/internal/shaping"
)

// Budgets holds the shaping state of every Graph mailbox — request slots, the messages-per-minute
// and recipients-per-day windows, a quota pause — for the life of the process, so a Transport rebuilt
// by a reload goes on counting where the old one stopped (as relay/deliver/smtp's Budgets do). cmd
// creates one per process and hands it to every Transport (Options.Budgets).
type Budgets struct{ r shaping.Registry[budget] }

// NewBudgets returns an empty registry.
func NewBudgets() *Budgets { return &Budgets{} }

// budget is one mailbox's shaping state.
type budget struct {
	slots  shaping.Slots  // requests in flight
	limits shaping.Limits // messages a minute, recipients a day, quota pause
}

// budget returns the mailbox's budget with o's limits in force (what was counted stays counted).
func (r *Budgets) budget(o *Options) *budget {
	b := r.r.Get(o.Name+"\x00"+strings.ToLower(o.Mailbox), func() *budget { return &budget{} })
	b.limits.Resize(o.MessagesPerMinute, o.RecipientsPerDay)
	b.slots.SetLimit(o.MaxConcurrent)
	return b
}
