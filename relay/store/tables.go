package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// tables is the part of the store both databases run with the same SQL: bounces, suppression, the
// delivery log, secrets and notification marks. SQLite and Postgres embed it and give it their pools.
type tables struct {
	read    *sql.DB // readers
	durable *sql.DB // bounces, suppression, secrets, notification marks: committed durably
	log     *deliveryLogWriter
	// suppressions answers Suppressed from memory; writes through this store mark it stale at once.
	suppressions suppressionCache
}

// RecordBounce stores a bounce and, when b.Suppressed (an address fault: relay.Classify), puts its
// address on the suppression list (or refreshes the reason), in one transaction.
func (s *tables) RecordBounce(ctx context.Context, b relay.Bounce) error {
	tx, err := s.durable.BeginTx(ctx, nil)
	if err != nil {
		return storeErr(err)
	}
	defer tx.Rollback()
	if err := s.recordBounce(ctx, tx, b); err != nil {
		return err
	}
	defer s.suppressions.invalidate() // after the commit: a lookup in between would cache the old list
	return storeErr(tx.Commit())
}

// recordBounce is RecordBounce inside the caller's transaction; the caller invalidates the
// suppression cache after its commit.
func (s *tables) recordBounce(ctx context.Context, tx *sql.Tx, b relay.Bounce) error {
	key := addressKey(b.Address)
	if key == "" {
		return badInput("bounce without an address")
	}
	if b.Time.IsZero() {
		b.Time = time.Now()
	}
	t := ms(b.Time)
	if _, err := tx.ExecContext(ctx, `INSERT INTO bounces
		(address, address_key, channel, time_ms, code, enhanced, diagnostic, message_id, ticket, queue_id, reason,
		 fault, suppressed)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
		strings.TrimSpace(b.Address), key, b.Channel, t, b.Code, string(b.Enhanced), b.Diagnostic,
		b.MessageID, b.Ticket, b.QueueID, b.Reason, b.Fault.String(), b.Suppressed); err != nil {
		return storeErr(err)
	}
	if !b.Suppressed {
		return nil
	}
	if err := upsertSuppression(ctx, tx, b.Address, key, suppressionReason(b), "bounce", t); err != nil {
		return storeErr(err)
	}
	return nil
}

func upsertSuppression(ctx context.Context, tx *sql.Tx, addr, key, reason, source string, t int64) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO suppression (address_key, address, reason, source, created_ms, updated_ms)
		VALUES ($1, $2, $3, $4, $5, $5)
		ON CONFLICT (address_key) DO UPDATE SET
			address = excluded.address, reason = excluded.reason, source = excluded.source, updated_ms = excluded.updated_ms`,
		key, strings.TrimSpace(addr), reason, source, t)
	return err
}

// Suppress puts an address on the suppression list without a bounce record: SES complaints, or an
// operator's decision. source says who ("ses_complaint", "operator").
func (s *tables) Suppress(ctx context.Context, addr, reason, source string) error {
	key := addressKey(addr)
	if key == "" {
		return badInput("empty address")
	}
	tx, err := s.durable.BeginTx(ctx, nil)
	if err != nil {
		return storeErr(err)
	}
	defer tx.Rollback()
	if err := upsertSuppression(ctx, tx, addr, key, reason, source, ms(time.Time{})); err != nil {
		return storeErr(err)
	}
	defer s.suppressions.invalidate()
	return storeErr(tx.Commit())
}

// Suppressed reports whether addr (any case) is on the suppression list, and why.
func (s *tables) Suppressed(ctx context.Context, addr string) (reason string, ok bool, err error) {
	return s.suppressions.lookup(ctx, s.read, addressKey(addr))
}

// Suppressions lists the suppression list, most recently updated first (at most limit; 0 = 100).
func (s *tables) Suppressions(ctx context.Context, n int) ([]Suppression, error) {
	rows, err := s.read.QueryContext(ctx, `SELECT address, reason, source, created_ms, updated_ms
		FROM suppression ORDER BY updated_ms DESC, address_key LIMIT $1`, limit(n))
	if err != nil {
		return nil, storeErr(err)
	}
	defer rows.Close()
	var out []Suppression
	for rows.Next() {
		var x Suppression
		var c, u int64
		if err := rows.Scan(&x.Address, &x.Reason, &x.Source, &c, &u); err != nil {
			return nil, storeErr(err)
		}
		x.Created, x.Updated = fromMS(c), fromMS(u)
		out = append(out, x)
	}
	return out, storeErr(rows.Err())
}

// Bounces lists bounces, newest first.
func (s *tables) Bounces(ctx context.Context, f BounceFilter) ([]relay.Bounce, error) {
	q := `SELECT address, channel, time_ms, code, enhanced, diagnostic, message_id, ticket, queue_id, reason,
		fault, suppressed FROM bounces WHERE 1=1`
	var args []any
	if f.Address != "" {
		args = append(args, addressKey(f.Address))
		q += fmt.Sprintf(" AND address_key = $%d", len(args))
	}
	if f.Channel != "" {
		args = append(args, f.Channel)
		q += fmt.Sprintf(" AND channel = $%d", len(args))
	}
	args = append(args, limit(f.Limit))
	q += fmt.Sprintf(" ORDER BY time_ms DESC, id DESC LIMIT $%d", len(args))
	rows, err := s.read.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, storeErr(err)
	}
	defer rows.Close()
	var out []relay.Bounce
	for rows.Next() {
		var b relay.Bounce
		var t int64
		var enh, fault string
		if err := rows.Scan(&b.Address, &b.Channel, &t, &b.Code, &enh, &b.Diagnostic, &b.MessageID,
			&b.Ticket, &b.QueueID, &b.Reason, &fault, &b.Suppressed); err != nil {
			return nil, storeErr(err)
		}
		b.Time, b.Enhanced, b.Fault = fromMS(t), relay.EnhancedCode(enh), relay.FaultFromString(fault)
		out = append(out, b)
	}
	return out, storeErr(rows.Err())
}

// RemoveBounces deletes every bounce of addr (any case) and lifts its suppression (mailgate bounces
// remove). It returns the number of bounce records removed plus one if a suppression entry was lifted,
// so 0 means the address was unknown.
func (s *tables) RemoveBounces(ctx context.Context, addr string) (int, error) {
	key := addressKey(addr)
	if key == "" {
		return 0, badInput("empty address")
	}
	tx, err := s.durable.BeginTx(ctx, nil)
	if err != nil {
		return 0, storeErr(err)
	}
	defer tx.Rollback()
	n := 0
	for _, q := range []string{`DELETE FROM bounces WHERE address_key = $1`, `DELETE FROM suppression WHERE address_key = $1`} {
		res, err := tx.ExecContext(ctx, q, key)
		if err != nil {
			return 0, storeErr(err)
		}
		c, err := res.RowsAffected()
		if err != nil {
			return 0, storeErr(err)
		}
		n += int(c)
	}
	defer s.suppressions.invalidate()
	if err := tx.Commit(); err != nil {
		return 0, storeErr(err)
	}
	return n, nil
}

// Deliveries searches the delivery log, most recently updated first.
func (s *tables) Deliveries(ctx context.Context, f DeliveryFilter) ([]relay.DeliveryRecord, error) {
	q := `SELECT queue_id, message_id, ticket, channel, principal, agent, recipients, status, attempts, last_reply, time_ms
		FROM deliveries d WHERE 1=1`
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	for _, c := range []struct{ col, v string }{{"ticket", f.Ticket}, {"queue_id", f.QueueID}, {"message_id", strings.Trim(f.MessageID, "<>")}} {
		if c.v != "" {
			q += " AND " + c.col + " = " + arg(c.v)
		}
	}
	if f.Rcpt != "" {
		q += " AND EXISTS (SELECT 1 FROM delivery_recipients r WHERE r.queue_id = d.queue_id AND r.address_key = " + arg(addressKey(f.Rcpt)) + ")"
	}
	if f.Status != "" {
		p := arg(f.Status)
		q += " AND (status = " + p + " OR EXISTS (SELECT 1 FROM delivery_recipients r WHERE r.queue_id = d.queue_id AND r.status = " + p + "))"
	}
	if !f.Since.IsZero() {
		q += " AND time_ms >= " + arg(f.Since.UnixMilli())
	}
	if !f.Until.IsZero() {
		q += " AND time_ms <= " + arg(f.Until.UnixMilli())
	}
	q += " ORDER BY time_ms DESC, queue_id DESC LIMIT " + arg(limit(f.Limit))
	rows, err := s.read.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, storeErr(err)
	}
	defer rows.Close()
	var out []relay.DeliveryRecord
	for rows.Next() {
		var r relay.DeliveryRecord
		var rcpts string
		var t int64
		if err := rows.Scan(&r.QueueID, &r.MessageID, &r.Ticket, &r.Channel, &r.Principal, &r.Agent, &rcpts, &r.Status,
			&r.Attempts, &r.LastReply, &t); err != nil {
			return nil, storeErr(err)
		}
		if err := json.Unmarshal([]byte(rcpts), &r.Recipients); err != nil {
			return nil, storeErr(fmt.Errorf("delivery %s: recipients: %w", r.QueueID, err))
		}
		r.Time = fromMS(t)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, storeErr(err)
	}
	return out, s.recipientStates(ctx, out)
}

// recipientStates fills in each record's per-recipient rows, in one query for all of them.
func (s *tables) recipientStates(ctx context.Context, recs []relay.DeliveryRecord) error {
	if len(recs) == 0 {
		return nil
	}
	at := make(map[string]int, len(recs))
	var marks []string
	var args []any
	for i, r := range recs {
		at[r.QueueID] = i
		args = append(args, r.QueueID)
		marks = append(marks, fmt.Sprintf("$%d", len(args)))
	}
	rows, err := s.read.QueryContext(ctx, `SELECT queue_id, address, status, code, enhanced, reply, time_ms
		FROM delivery_recipients WHERE queue_id IN (`+strings.Join(marks, ", ")+`) ORDER BY queue_id, address_key`, args...)
	if err != nil {
		return storeErr(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, enh string
		var st relay.RecipientState
		var t int64
		if err := rows.Scan(&id, &st.Address, &st.Status, &st.Code, &enh, &st.Reply, &t); err != nil {
			return storeErr(err)
		}
		st.Enhanced, st.Time = relay.EnhancedCode(enh), fromMS(t)
		if i, ok := at[id]; ok {
			recs[i].States = append(recs[i].States, st)
		}
	}
	return storeErr(rows.Err())
}

// PutSecret stores a sealed (already encrypted) secret under key, replacing any previous value: a
// rotated OAuth refresh token is persisted here before it is used.
func (s *tables) PutSecret(ctx context.Context, key, sealed string) error {
	if key == "" {
		return badInput("empty secret key")
	}
	_, err := s.durable.ExecContext(ctx, `INSERT INTO secrets (key, sealed, updated_ms) VALUES ($1, $2, $3)
		ON CONFLICT (key) DO UPDATE SET sealed = excluded.sealed, updated_ms = excluded.updated_ms`,
		key, sealed, ms(time.Time{}))
	return storeErr(err)
}

// GetSecret returns the sealed secret stored under key.
func (s *tables) GetSecret(ctx context.Context, key string) (sealed string, ok bool, err error) {
	err = s.read.QueryRowContext(ctx, `SELECT sealed FROM secrets WHERE key = $1`, key).Scan(&sealed)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return "", false, nil
	case err != nil:
		return "", false, storeErr(err)
	}
	return sealed, true, nil
}

// DeleteSecret removes the secret under key (a revoked authorization); deleting nothing is no error.
func (s *tables) DeleteSecret(ctx context.Context, key string) error {
	_, err := s.durable.ExecContext(ctx, `DELETE FROM secrets WHERE key = $1`, key)
	return storeErr(err)
}

// RecordNotification applies one SES notification (SNS delivers at least once) in one transaction:
// it claims id and records its bounces — suppressing the addresses of those marked Suppressed — or, on
// any failure, does neither, so SNS's redelivery is processed rather than skipped as a duplicate.
// first is false when id was claimed before (nothing is recorded again). The bounces are written in
// address order, so two notifications naming the same addresses lock their suppression rows in one
// order (PostgreSQL would otherwise deadlock them).
func (s *tables) RecordNotification(ctx context.Context, id string, bounces []relay.Bounce) (first bool, err error) {
	if id == "" {
		return false, badInput("empty notification id")
	}
	bounces = slices.Clone(bounces)
	slices.SortStableFunc(bounces, func(a, b relay.Bounce) int { return strings.Compare(addressKey(a.Address), addressKey(b.Address)) })
	tx, err := s.durable.BeginTx(ctx, nil)
	if err != nil {
		return false, storeErr(err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `INSERT INTO processed_notifications (id, time_ms) VALUES ($1, $2)
		ON CONFLICT (id) DO NOTHING`, id, ms(time.Time{}))
	if err != nil {
		return false, storeErr(err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return false, storeErr(err)
	}
	for _, b := range bounces {
		if err := s.recordBounce(ctx, tx, b); err != nil {
			return false, err
		}
	}
	defer s.suppressions.invalidate()
	if err := tx.Commit(); err != nil {
		return false, storeErr(err)
	}
	return true, nil
}

// PruneProcessed forgets notification ids older than before (SNS retries end within hours), returning
// how many were removed.
func (s *tables) PruneProcessed(ctx context.Context, before time.Time) (int, error) {
	res, err := s.durable.ExecContext(ctx, `DELETE FROM processed_notifications WHERE time_ms < $1`, before.UnixMilli())
	if err != nil {
		return 0, storeErr(err)
	}
	n, err := res.RowsAffected()
	return int(n), storeErr(err)
}

// migrate brings a schema up to date in one transaction: lock (if any) is run first, then the steps
// schema_version has not seen. A schema from a newer mailgate is refused rather than misread.
func migrate(ctx context.Context, db *sql.DB, lock string, steps []string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if lock != "" {
		if _, err := tx.ExecContext(ctx, lock); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return err
	}
	var version int
	switch err := tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&version); {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version(version) VALUES (0)`); err != nil {
			return err
		}
	case err != nil:
		return err
	}
	if version > len(steps) {
		return fmt.Errorf("database schema version %d is newer than this mailgate (%d)", version, len(steps))
	}
	for i := version; i < len(steps); i++ {
		if _, err := tx.ExecContext(ctx, steps[i]); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE schema_version SET version = $1`, len(steps)); err != nil {
		return err
	}
	return tx.Commit()
}
