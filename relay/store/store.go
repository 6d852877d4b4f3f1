// Package store keeps mailgate's shared state: bounces and the suppression list they feed, the delivery
// log, sealed OAuth secrets and the idempotency marks of SES notifications. This is the embedded SQLite
// implementation (modernc.org/sqlite: pure Go, builds with CGO_ENABLED=0).
//
// Design:
//   - The schema is created and migrated at Open, inside one transaction, recorded in schema_version;
//     a database from a newer mailgate is refused rather than misread.
//   - Three connection pools on one WAL database, because SQLite has one writer and two kinds of write:
//     a durable writer (one connection, synchronous=FULL: the WAL is fsynced at every commit) for
//     bounces, suppression, secrets and notification marks — losing any of these to a power cut would
//     mail a suppressed address again or lose a rotated refresh token; a log writer (one connection,
//     synchronous=NORMAL, durable at the next checkpoint) for the delivery log, written twice per
//     message and worth no fsync; and a reader pool. One connection per writer makes Go's pool, not
//     SQLite's sleeping busy handler, queue concurrent writers; BEGIN IMMEDIATE (_txlock=immediate)
//     takes the write lock up front so read-then-write transactions never fail with SQLITE_BUSY.
//   - Times are stored as Unix milliseconds (modernc would store time.Time as text in its zone).
//   - Addresses are compared case-insensitively through a lower-cased key column: operators and
//     upstreams spell the same mailbox differently, and suppression must not be dodged by case.
//   - The database, -wal and -shm files are 0600 (created so before the driver opens them, fixed at
//     Open if an older file is wider): they hold recipients, diagnostics and sealed tokens.
//   - The store never sees secrets in the clear: PutSecret takes values the caller already sealed.
//   - Errors leaving the package are *relay.Error 451 4.3.0 (temporary: the store may come back) with
//     the cause inside for the logs.
package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/mailgate/mailgate/relay"
)

// Store is the SQLite store. Its methods are safe for concurrent use.
type Store struct {
	read    *sql.DB // readers
	logw    *sql.DB // delivery log writer, synchronous=NORMAL
	durable *sql.DB // everything else that writes, synchronous=FULL
	log     *deliveryLogWriter
	// suppressions answers Suppressed from memory; writes through this Store mark it stale at once.
	suppressions suppressionCache
}

// dsn builds a modernc DSN. The path is escaped because SQLite parses the file: URI (a '?' or '#' in a
// directory name would otherwise cut it short).
func dsn(path, synchronous string) string {
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	return "file:" + esc + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)" +
		"&_pragma=synchronous(" + synchronous + ")&_txlock=immediate"
}

// Open opens (creating if needed) the database at path and brings its schema up to date.
func Open(path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("store: empty database path")
	}
	if err := privateFile(path); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s := &Store{}
	var err error
	// The durable writer opens first: it sets WAL mode and runs the migrations before anyone reads.
	if s.durable, err = sql.Open("sqlite", dsn(path, "FULL")); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s.durable.SetMaxOpenConns(1)
	if err := migrate(context.Background(), s.durable); err != nil {
		s.durable.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	if s.logw, err = sql.Open("sqlite", dsn(path, "NORMAL")); err != nil {
		s.durable.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	// SQLite creates -wal and -shm with the mode of the database file (its robust_open copies it), so
	// they are 0600 already; a database from before this rule, or a umask that interfered, is fixed here.
	for _, sidecar := range []string{path + "-wal", path + "-shm"} {
		if err := os.Chmod(sidecar, 0o600); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.durable.Close()
			s.logw.Close()
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	s.logw.SetMaxOpenConns(1)
	if s.read, err = sql.Open("sqlite", dsn(path, "NORMAL")); err != nil {
		s.durable.Close()
		s.logw.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	s.read.SetMaxOpenConns(4)
	if s.log, err = newDeliveryLogWriter(s.logw); err != nil {
		s.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	return s, nil
}

// privateFile creates the database file with mode 0600 before the driver opens it (the driver would
// create it 0644 under the usual umask), and takes group and other access away from an existing one:
// the store holds bounce diagnostics, recipients of the delivery log and sealed OAuth tokens.
func privateFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Chmod(0o600)
}

// Close closes every connection.
func (s *Store) Close() error {
	var err error
	if s.log != nil {
		err = s.log.close()
	}
	return errors.Join(err, s.read.Close(), s.logw.Close(), s.durable.Close())
}

// migrations are applied in order; schema_version holds how many have run. Never edit one that has
// shipped: append a new one.
func migrations() []string {
	return []string{
		`CREATE TABLE bounces (
		id          INTEGER PRIMARY KEY,
		address     TEXT    NOT NULL,
		address_key TEXT    NOT NULL,
		channel     TEXT    NOT NULL,
		time_ms     INTEGER NOT NULL,
		code        INTEGER NOT NULL,
		enhanced    TEXT    NOT NULL,
		diagnostic  TEXT    NOT NULL,
		message_id  TEXT    NOT NULL,
		ticket      TEXT    NOT NULL,
		queue_id    TEXT    NOT NULL,
		reason      TEXT    NOT NULL
	);
	CREATE INDEX bounces_address ON bounces(address_key, time_ms);
	CREATE INDEX bounces_channel ON bounces(channel, time_ms);
	CREATE INDEX bounces_time ON bounces(time_ms);
	CREATE TABLE suppression (
		address_key TEXT PRIMARY KEY,
		address     TEXT    NOT NULL,
		reason      TEXT    NOT NULL,
		source      TEXT    NOT NULL,
		created_ms  INTEGER NOT NULL,
		updated_ms  INTEGER NOT NULL
	);
	CREATE TABLE deliveries (
		queue_id   TEXT PRIMARY KEY,
		message_id TEXT    NOT NULL,
		ticket     TEXT    NOT NULL,
		channel    TEXT    NOT NULL,
		principal  TEXT    NOT NULL,
		recipients TEXT    NOT NULL,
		status     TEXT    NOT NULL,
		attempts   INTEGER NOT NULL,
		last_reply TEXT    NOT NULL,
		time_ms    INTEGER NOT NULL,
		created_ms INTEGER NOT NULL
	);
	CREATE INDEX deliveries_ticket ON deliveries(ticket, time_ms);
	CREATE INDEX deliveries_message_id ON deliveries(message_id);
	CREATE INDEX deliveries_time ON deliveries(time_ms);
	CREATE TABLE secrets (
		key        TEXT PRIMARY KEY,
		sealed     TEXT    NOT NULL,
		updated_ms INTEGER NOT NULL
	);
	CREATE TABLE processed_notifications (
		id      TEXT PRIMARY KEY,
		time_ms INTEGER NOT NULL
	);`,
		// 2: a version of the suppression list, bumped by triggers on every change from any writer
		// (this process, `mailgate bounces remove`, another instance), so a cached copy knows when it
		// is stale with one small read instead of a lookup per recipient.
		`CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
	INSERT INTO counters (name, value) VALUES ('suppression', 0);
	CREATE TRIGGER suppression_inserted AFTER INSERT ON suppression
		BEGIN UPDATE counters SET value = value + 1 WHERE name = 'suppression'; END;
	CREATE TRIGGER suppression_updated AFTER UPDATE ON suppression
		BEGIN UPDATE counters SET value = value + 1 WHERE name = 'suppression'; END;
	CREATE TRIGGER suppression_deleted AFTER DELETE ON suppression
		BEGIN UPDATE counters SET value = value + 1 WHERE name = 'suppression'; END;`,
		// 3: every bounce says whose fault it was and whether it suppressed the address (only an
		// address fault does); bounces recorded before this version all suppressed.
		`ALTER TABLE bounces ADD COLUMN fault TEXT NOT NULL DEFAULT 'address';
	ALTER TABLE bounces ADD COLUMN suppressed INTEGER NOT NULL DEFAULT 1;`,
		// 4: the delivery log names the agent a service principal sent for.
		`ALTER TABLE deliveries ADD COLUMN agent TEXT NOT NULL DEFAULT '';`,
	}
}

func migrate(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil) // BEGIN IMMEDIATE: two instances starting at once migrate in turn
	if err != nil {
		return err
	}
	defer tx.Rollback()
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
	steps := migrations()
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

// RecordBounce stores a bounce and, when b.Suppressed (an address fault: relay.Classify), puts its
// address on the suppression list (or refreshes the reason), in one transaction.
func (s *Store) RecordBounce(ctx context.Context, b relay.Bounce) error {
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
func (s *Store) recordBounce(ctx context.Context, tx *sql.Tx, b relay.Bounce) error {
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
func (s *Store) Suppress(ctx context.Context, addr, reason, source string) error {
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
func (s *Store) Suppressed(ctx context.Context, addr string) (reason string, ok bool, err error) {
	return s.suppressions.lookup(ctx, s.read, addressKey(addr))
}

// Suppression is one entry of the suppression list.
type Suppression struct {
	Address string
	Reason  string
	Source  string // "bounce", "ses_complaint", "operator", ...
	Created time.Time
	Updated time.Time
}

// Suppressions lists the suppression list, most recently updated first (at most limit; 0 = 100).
func (s *Store) Suppressions(ctx context.Context, n int) ([]Suppression, error) {
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

// BounceFilter selects bounces; empty fields match everything. Limit 0 means 100.
type BounceFilter struct {
	Address string // case-insensitive exact address
	Channel string
	Limit   int
}

// Bounces lists bounces, newest first.
func (s *Store) Bounces(ctx context.Context, f BounceFilter) ([]relay.Bounce, error) {
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
func (s *Store) RemoveBounces(ctx context.Context, addr string) (int, error) {
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

// DeliveryFilter selects delivery log lines; empty fields match everything. Limit 0 means 100.
type DeliveryFilter struct {
	Ticket    string // the seed's "title=" search
	QueueID   string
	MessageID string // without angle brackets
	Limit     int
}

// Deliveries searches the delivery log, most recently updated first.
func (s *Store) Deliveries(ctx context.Context, f DeliveryFilter) ([]relay.DeliveryRecord, error) {
	q := `SELECT queue_id, message_id, ticket, channel, principal, agent, recipients, status, attempts, last_reply, time_ms
		FROM deliveries WHERE 1=1`
	var args []any
	for _, c := range []struct{ col, v string }{{"ticket", f.Ticket}, {"queue_id", f.QueueID}, {"message_id", strings.Trim(f.MessageID, "<>")}} {
		if c.v != "" {
			args = append(args, c.v)
			q += fmt.Sprintf(" AND %s = $%d", c.col, len(args))
		}
	}
	args = append(args, limit(f.Limit))
	q += fmt.Sprintf(" ORDER BY time_ms DESC, queue_id DESC LIMIT $%d", len(args))
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
	return out, storeErr(rows.Err())
}

// PutSecret stores a sealed (already encrypted) secret under key, replacing any previous value: a
// rotated OAuth refresh token is persisted here before it is used.
func (s *Store) PutSecret(ctx context.Context, key, sealed string) error {
	if key == "" {
		return badInput("empty secret key")
	}
	_, err := s.durable.ExecContext(ctx, `INSERT INTO secrets (key, sealed, updated_ms) VALUES ($1, $2, $3)
		ON CONFLICT (key) DO UPDATE SET sealed = excluded.sealed, updated_ms = excluded.updated_ms`,
		key, sealed, ms(time.Time{}))
	return storeErr(err)
}

// GetSecret returns the sealed secret stored under key.
func (s *Store) GetSecret(ctx context.Context, key string) (sealed string, ok bool, err error) {
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
func (s *Store) DeleteSecret(ctx context.Context, key string) error {
	_, err := s.durable.ExecContext(ctx, `DELETE FROM secrets WHERE key = $1`, key)
	return storeErr(err)
}

// RecordNotification applies one SES notification (SNS delivers at least once) in one transaction:
// it claims id and records its bounces — suppressing the addresses of those marked Suppressed — or, on
// any failure, does neither, so SNS's redelivery is processed rather than skipped as a duplicate.
// first is false when id was claimed before (nothing is recorded again).
func (s *Store) RecordNotification(ctx context.Context, id string, bounces []relay.Bounce) (first bool, err error) {
	if id == "" {
		return false, badInput("empty notification id")
	}
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
func (s *Store) PruneProcessed(ctx context.Context, before time.Time) (int, error) {
	res, err := s.durable.ExecContext(ctx, `DELETE FROM processed_notifications WHERE time_ms < $1`, before.UnixMilli())
	if err != nil {
		return 0, storeErr(err)
	}
	n, err := res.RowsAffected()
	return int(n), storeErr(err)
}
