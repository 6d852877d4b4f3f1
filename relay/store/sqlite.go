package store

// The SQLite implementation (modernc.org/sqlite: pure Go, builds with CGO_ENABLED=0), for one instance.
//
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
//   - The database, -wal and -shm files are 0600 (created so before the driver opens them, fixed at
//     Open if an older file is wider): they hold recipients, diagnostics and sealed tokens.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// SQLite is the embedded store. Its methods are safe for concurrent use.
type SQLite struct {
	tables
	path string
	logw *sql.DB // delivery log writer, synchronous=NORMAL

	locksMu sync.Mutex
	locks   map[string]chan struct{} // LockRefresh's locks, one-slot semaphores by key
}

var _ Store = (*SQLite)(nil)

// dsn builds a modernc DSN. The path is escaped because SQLite parses the file: URI (a '?' or '#' in a
// directory name would otherwise cut it short).
func dsn(path, synchronous string) string {
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(path)
	return "file:" + esc + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)" +
		"&_pragma=synchronous(" + synchronous + ")&_txlock=immediate"
}

// Open opens (creating if needed) the database at path and brings its schema up to date.
func Open(path string) (*SQLite, error) {
	if path == "" {
		return nil, errors.New("store: empty database path")
	}
	if err := privateFile(path); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s := &SQLite{path: path, locks: map[string]chan struct{}{}}
	var err error
	// The durable writer opens first: it sets WAL mode and runs the migrations before anyone reads.
	if s.durable, err = sql.Open("sqlite", dsn(path, "FULL")); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s.durable.SetMaxOpenConns(1)
	if err := migrate(context.Background(), s.durable, "", migrations()); err != nil { // BEGIN IMMEDIATE: instances starting at once migrate in turn
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

// LockRefresh is a process-local lock: a SQLite store belongs to one instance.
func (s *SQLite) LockRefresh(ctx context.Context, key string) (func(), error) {
	s.locksMu.Lock()
	l, ok := s.locks[key]
	if !ok {
		l = make(chan struct{}, 1)
		s.locks[key] = l
	}
	s.locksMu.Unlock()
	select {
	case l <- struct{}{}:
		return func() { <-l }, nil
	case <-ctx.Done():
		return nil, storeErr(ctx.Err())
	}
}

// Unavailable is always nil: a local file is there as long as the process is.
func (s *SQLite) Unavailable() error { return nil }

// Describe names the database file.
func (s *SQLite) Describe() string { return "sqlite " + s.path }

// Close closes every connection.
func (s *SQLite) Close() error {
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
		// 5: the delivery log keeps a row per recipient, searchable by address.
		`CREATE TABLE delivery_recipients (
		queue_id    TEXT    NOT NULL,
		address     TEXT    NOT NULL,
		address_key TEXT    NOT NULL,
		status      TEXT    NOT NULL,
		code        INTEGER NOT NULL,
		enhanced    TEXT    NOT NULL,
		reply       TEXT    NOT NULL,
		time_ms     INTEGER NOT NULL,
		PRIMARY KEY (queue_id, address_key)
	);
	CREATE INDEX delivery_recipients_address ON delivery_recipients(address_key, time_ms);`,
	}
}
