// Package store keeps mailgate's shared state: bounces and the suppression list they feed, the delivery
// log, sealed OAuth secrets and the idempotency marks of SES notifications. Two implementations fulfil
// one contract (Store): SQLite, embedded, for one instance (the development default); PostgreSQL, for a
// fleet of instances that share suppression, tokens, the log and the upstream budgets.
//
// Design:
//   - Store is declared here rather than by each consumer because cmd holds one value for the whole
//     process and the contract test suite (contract_test.go) runs the same cases against both types.
//     Consumers still take their own narrow interfaces (submit.Suppressions, queue.Bounces,
//     oauth.SecretStore, events.Store); Store is a superset of them.
//   - Both run the same SQL through database/sql (modernc's "sqlite" driver, pgx's stdlib driver): the
//     statements are written to the common dialect ($n placeholders, ON CONFLICT … DO UPDATE,
//     RETURNING), so bounces, suppression, the log, secrets and notification marks are one
//     implementation (tables) embedded in both. The schemas and their migrations differ (DDL does).
//   - Times are stored as Unix milliseconds (modernc would store time.Time as text in its zone).
//   - Addresses are compared case-insensitively through a lower-cased key column: operators and
//     upstreams spell the same mailbox differently, and suppression must not be dodged by case.
//   - Suppression is answered from an in-memory copy of the list, kept current by a version counter
//     that triggers bump on every change (suppression.go); PostgreSQL also pushes each change with
//     NOTIFY, so another instance's bounce is refused at RCPT within milliseconds.
//   - Coordination of a fleet (PostgreSQL): LockRefresh (an advisory lock per OAuth credential, so one
//     token request serves every instance), the upstream budgets of relay/deliver/smtp.Fleet and the
//     SES token bucket of relay/deliver/ses.SendRate (budget.go). These are declared by their
//     consumers; cmd hands the store to them when it implements them. Unavailable reports a
//     database that cannot be reached (queue.Gate holds deliveries meanwhile).
//   - The store never sees secrets in the clear: PutSecret takes values the caller already sealed.
//   - Errors leaving the package are *relay.Error 451 4.3.0 (temporary: the store may come back) with
//     the cause inside for the logs. A PostgreSQL error never carries the DSN (it may hold a password).
package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// Store is everything mailgate keeps outside the spool. Its methods are safe for concurrent use.
type Store interface {
	// RecordBounce stores a bounce and, when b.Suppressed (an address fault: relay.Classify), puts its
	// address on the suppression list (or refreshes the reason), in one transaction.
	RecordBounce(ctx context.Context, b relay.Bounce) error
	// Bounces lists bounces, newest first.
	Bounces(ctx context.Context, f BounceFilter) ([]relay.Bounce, error)
	// RemoveBounces deletes every bounce of addr (any case) and lifts its suppression; it returns the
	// number of bounce records removed plus one if a suppression entry was lifted (0: unknown address).
	RemoveBounces(ctx context.Context, addr string) (int, error)

	// Suppress puts an address on the suppression list without a bounce (complaints, operators).
	Suppress(ctx context.Context, addr, reason, source string) error
	// Suppressed reports whether addr (any case) is suppressed, and why: answered from a cached copy
	// that follows changes made by any process sharing the store.
	Suppressed(ctx context.Context, addr string) (reason string, ok bool, err error)
	// Suppressions lists the suppression list, most recently updated first (at most n; 0 = 100).
	Suppressions(ctx context.Context, n int) ([]Suppression, error)

	// LogDelivery records the latest state of a queued message (an upsert by queue id); concurrent
	// callers share one transaction (group commit).
	LogDelivery(ctx context.Context, r relay.DeliveryRecord) error
	// LogDeliveryLater queues a delivery-log row and returns at once; onError hears of a failure.
	LogDeliveryLater(r relay.DeliveryRecord, onError func(relay.DeliveryRecord, error))
	// Deliveries searches the delivery log, most recently updated first.
	Deliveries(ctx context.Context, f DeliveryFilter) ([]relay.DeliveryRecord, error)

	// PutSecret stores a sealed secret under key, replacing any previous value.
	PutSecret(ctx context.Context, key, sealed string) error
	// GetSecret returns the sealed secret stored under key.
	GetSecret(ctx context.Context, key string) (sealed string, ok bool, err error)
	// DeleteSecret removes the secret under key; deleting nothing is no error.
	DeleteSecret(ctx context.Context, key string) error

	// RecordNotification claims an SES notification id and records its bounces in one transaction,
	// or does neither; first is false when id was claimed before.
	RecordNotification(ctx context.Context, id string, bounces []relay.Bounce) (first bool, err error)
	// PruneProcessed forgets notification ids older than before.
	PruneProcessed(ctx context.Context, before time.Time) (int, error)

	// LockRefresh holds the lock named key across every process sharing the store until unlock is
	// called (auth/oauth's single token request per credential); a crashed holder's lock is released.
	LockRefresh(ctx context.Context, key string) (unlock func(), err error)

	// Unavailable says why the store cannot be reached right now, or nil; the queue holds deliveries
	// meanwhile (queue.Gate).
	Unavailable() error
	// Describe names the store for operators ("sqlite /var/lib/mailgate/mailgate.db", "postgresql
	// db.internal:5432/mailgate"): never a password.
	Describe() string
	// Close ends the store after the delivery log has written what it was given.
	Close() error
}

// Suppression is one entry of the suppression list.
type Suppression struct {
	Address string
	Reason  string
	Source  string // "bounce", "ses_complaint", "operator", ...
	Created time.Time
	Updated time.Time
}

// BounceFilter selects bounces; empty fields match everything. Limit 0 means 100.
type BounceFilter struct {
	Address string // case-insensitive exact address
	Channel string
	Limit   int
}

// DeliveryFilter selects delivery log lines; empty fields match everything. Limit 0 means 100.
type DeliveryFilter struct {
	Ticket    string // the seed's "title=" search
	QueueID   string
	MessageID string // without angle brackets
	Rcpt      string // a recipient of the message (any case)
	// Status matches the message's status or any of its recipients'.
	Status       string
	Since, Until time.Time // the latest update within [Since, Until]; zero: open
	Limit        int
}

func storeErr(err error) error {
	if err == nil {
		return nil
	}
	return relay.Wrap(err, 451, relay.CodeTempLocal, "store", "local store unavailable")
}

func badInput(format string, args ...any) error {
	return relay.Errorf(501, relay.CodeBadSyntax, "store", format, args...)
}

// addressKey is the case-insensitive form under which an address is suppressed.
func addressKey(addr string) string {
	return strings.ToLower(strings.Trim(strings.TrimSpace(addr), "<>"))
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		t = time.Now()
	}
	return t.UnixMilli()
}

func fromMS(v int64) time.Time { return time.UnixMilli(v).UTC() }

func limit(n int) int {
	switch {
	case n <= 0:
		return 100
	case n > 10000:
		return 10000
	}
	return n
}

// suppressionReason is what submission shows at RCPT for a bounced address.
func suppressionReason(b relay.Bounce) string {
	r := fmt.Sprintf("bounced %s: %d %s %s", b.Time.UTC().Format("2006-01-02"), b.Code, b.Enhanced, b.Diagnostic)
	if len(r) > 300 {
		r = r[:300]
	}
	return strings.TrimSpace(r)
}
