package store

// The PostgreSQL implementation (pgx/v5 through database/sql), the shared store of a fleet.
//
//   - One pool serves readers and writers: PostgreSQL has no single-writer limit, and every commit is
//     durable (synchronous_commit as the server is configured). The delivery log keeps its group
//     committer: one transaction for many rows is fewer round trips, not only fewer fsyncs.
//   - Migrations run at open inside one transaction that first takes a transaction-scoped advisory
//     lock (pg_advisory_xact_lock) keyed by the schema: instances starting together migrate in turn,
//     and the later ones find the schema current and apply nothing. A database from a newer mailgate
//     is refused rather than misread.
//   - Every change of the suppression list bumps a version row (as SQLite's triggers do) from a
//     deferred constraint trigger — at commit, after the transaction's row locks, so concurrent
//     bounces cannot deadlock on the version row — and sends NOTIFY mailgate_suppression with the
//     schema name. A listener connection per instance marks the cached list stale on each notification;
//     the version recheck stays as the fallback when the listener is down.
//   - The DSN may carry a password: it is never logged or put in an error. Describe shows host, port,
//     database and schema only; parse errors are replaced by a fixed text (pgx redacts passwords only
//     on a best-effort basis).
//   - Every statement has a deadline (ConnectTimeout to reach the server, the caller's context after):
//     when the database is unreachable the callers get 451 4.3.0 promptly, and the pool reconnects by
//     itself when it returns.

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// PostgresOptions tune OpenPostgres; the zero value is usable.
type PostgresOptions struct {
	// MaxConns bounds the pool (default 10). Submission's lookups are answered from memory, so a few
	// connections carry the log writer, bounces and the coordination state of the transports.
	MaxConns int
	// ConnectTimeout bounds one connection attempt when the DSN sets none (default 5s).
	ConnectTimeout time.Duration
	Logger         *slog.Logger // default: discard
}

// Postgres is the shared store. Its methods are safe for concurrent use.
type Postgres struct {
	tables
	cfg      *pgx.ConnConfig
	describe string
	logger   *slog.Logger
	stop     context.CancelFunc
	wg       sync.WaitGroup
	// down is why the database is unreachable (nil: reachable), as the listener connection last saw it.
	down atomic.Pointer[error]
}

var _ Store = (*Postgres)(nil)

// suppressionChannel is the NOTIFY channel of suppression changes; the payload is the schema name, so
// stores in different schemas of one database ignore each other.
const suppressionChannel = "mailgate_suppression"

// OpenPostgres connects to the database of dsn (a libpq keyword/value string or a postgres:// URI),
// brings the schema up to date and starts the suppression listener.
func OpenPostgres(ctx context.Context, dsn string, o PostgresOptions) (*Postgres, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// The parse error quotes the DSN (redacted on a best-effort basis only): say what, not where.
		return nil, errors.New("store: the PostgreSQL DSN does not parse (libpq key=value or postgres:// URI)")
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = o.ConnectTimeout
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 10
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Postgres{cfg: cfg, logger: o.Logger}
	s.describe = "postgresql " + net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))) + "/" + cfg.Database
	if sp := cfg.RuntimeParams["search_path"]; sp != "" {
		s.describe += " (search_path " + sp + ")"
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(o.MaxConns)
	db.SetMaxIdleConns(o.MaxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	s.read, s.durable = db, db
	if err := migrate(ctx, db, migrationLock, postgresMigrations()); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", s.describe, err)
	}
	if s.log, err = newDeliveryLogWriter(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	lctx, stop := context.WithCancel(context.Background())
	s.stop = stop
	s.wg.Add(1)
	go s.listen(lctx)
	return s, nil
}

// Describe names the server, database and schema (never the user's password).
func (s *Postgres) Describe() string { return s.describe }

// Close stops the listener, lets the delivery log write what it was given and closes the pool.
func (s *Postgres) Close() error {
	s.stop()
	s.wg.Wait()
	var err error
	if s.log != nil {
		err = s.log.close()
	}
	return errors.Join(err, s.durable.Close())
}

// listen keeps a LISTEN connection open and marks the suppression cache stale at every notification
// for this schema. Whenever the connection is (re)made the cache is marked stale too: notifications
// sent while it was down are lost, the version check is not.
func (s *Postgres) listen(ctx context.Context) {
	defer s.wg.Done()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		s.setDown(err)
		s.suppressions.invalidate() // notifications may be missed from now on
		s.logger.Warn("store: the database is unreachable; deliveries wait and submissions are deferred until it is back", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

func (s *Postgres) listenOnce(ctx context.Context) error {
	// Every step has a deadline: a network that stops answering mid-setup must not hang the listener
	// (and with it the store's view of the database).
	setup, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout+2*listenerPing)
	defer cancel()
	conn, err := pgx.ConnectConfig(setup, s.cfg)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), listenerPing)
		defer cancel()
		conn.Close(cctx)
	}()
	var schema string
	if err := conn.QueryRow(setup, `SELECT current_schema()`).Scan(&schema); err != nil {
		return err
	}
	if _, err := conn.Exec(setup, "LISTEN "+suppressionChannel); err != nil {
		return err
	}
	s.suppressions.invalidate()
	if s.down.Swap(nil) != nil {
		s.logger.Info("store: the database is reachable again")
	}
	for {
		wctx, cancel := context.WithTimeout(ctx, listenerPing)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			if n.Payload == schema {
				s.suppressions.invalidate()
			}
		case ctx.Err() == nil && wctx.Err() != nil:
			// Idle for listenerPing: prove the connection is alive (a silent network loses no RST).
			pctx, cancel := context.WithTimeout(ctx, listenerPing)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
		default:
			return err
		}
	}
}

// Suppressed answers from the cached list, or at once with 451 4.3.0 while the database is known to be
// unreachable: a submission is deferred without waiting for a connection attempt to time out.
func (s *Postgres) Suppressed(ctx context.Context, addr string) (string, bool, error) {
	if err := s.Unavailable(); err != nil {
		return "", false, err
	}
	return s.tables.Suppressed(ctx, addr)
}

// listenerPing is how long the listener waits idle before it pings: the bound on noticing a database
// that went away without closing the connection.
const listenerPing = 3 * time.Second

func (s *Postgres) setDown(err error) {
	err = storeErr(err)
	s.down.Store(&err)
}

// Unavailable reports why the database cannot be reached, or nil: the queue holds deliveries while it
// is unreachable (queue.Gate). It is the listener connection's view, refreshed at every reconnection
// attempt and at least every listenerPing.
func (s *Postgres) Unavailable() error {
	if p := s.down.Load(); p != nil {
		return *p
	}
	return nil
}

// migrationLock makes instances starting together migrate one after the other (held to the commit).
const migrationLock = `SELECT pg_advisory_xact_lock(hashtext('mailgate.migrate.' || current_schema()))`

// postgresMigrations are applied in order; schema_version holds how many have run. Never edit one that
// has shipped: append a new one.
func postgresMigrations() []string {
	return []string{
		`CREATE TABLE bounces (
		id          BIGSERIAL PRIMARY KEY,
		address     TEXT    NOT NULL,
		address_key TEXT    NOT NULL,
		channel     TEXT    NOT NULL,
		time_ms     BIGINT  NOT NULL,
		code        INTEGER NOT NULL,
		enhanced    TEXT    NOT NULL,
		diagnostic  TEXT    NOT NULL,
		message_id  TEXT    NOT NULL,
		ticket      TEXT    NOT NULL,
		queue_id    TEXT    NOT NULL,
		reason      TEXT    NOT NULL,
		fault       TEXT    NOT NULL,
		suppressed  BOOLEAN NOT NULL
	);
	CREATE INDEX bounces_address ON bounces(address_key, time_ms);
	CREATE INDEX bounces_channel ON bounces(channel, time_ms);
	CREATE INDEX bounces_time ON bounces(time_ms);
	CREATE TABLE suppression (
		address_key TEXT PRIMARY KEY,
		address     TEXT   NOT NULL,
		reason      TEXT   NOT NULL,
		source      TEXT   NOT NULL,
		created_ms  BIGINT NOT NULL,
		updated_ms  BIGINT NOT NULL
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
		time_ms    BIGINT  NOT NULL,
		created_ms BIGINT  NOT NULL
	);
	CREATE INDEX deliveries_ticket ON deliveries(ticket, time_ms);
	CREATE INDEX deliveries_message_id ON deliveries(message_id);
	CREATE INDEX deliveries_time ON deliveries(time_ms);
	CREATE TABLE secrets (
		key        TEXT PRIMARY KEY,
		sealed     TEXT   NOT NULL,
		updated_ms BIGINT NOT NULL
	);
	CREATE TABLE processed_notifications (
		id      TEXT PRIMARY KEY,
		time_ms BIGINT NOT NULL
	);
	CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);
	INSERT INTO counters (name, value) VALUES ('suppression', 0);
	CREATE FUNCTION suppression_changed() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		UPDATE counters SET value = value + 1 WHERE name = 'suppression';
		PERFORM pg_notify('` + suppressionChannel + `', current_schema());
		RETURN NULL;
	END $$;
	CREATE CONSTRAINT TRIGGER suppression_changed AFTER INSERT OR UPDATE OR DELETE ON suppression
		DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION suppression_changed();`,
		// 2: the upstream budgets of the fleet (budget.go): connection slots as leases, the demand
		// for them, and the rate windows' buckets.
		`CREATE TABLE budget_leases (
		id         BIGSERIAL PRIMARY KEY,
		identity   TEXT   NOT NULL,
		holder     TEXT   NOT NULL,
		expires_ms BIGINT NOT NULL
	);
	CREATE INDEX budget_leases_identity ON budget_leases(identity, expires_ms);
	CREATE TABLE budget_demand (
		identity     TEXT   NOT NULL,
		holder       TEXT   NOT NULL,
		wanted_until BIGINT NOT NULL,
		PRIMARY KEY (identity, holder)
	);
	CREATE TABLE budget_counts (
		identity TEXT    NOT NULL,
		win      TEXT    NOT NULL,
		bucket   BIGINT  NOT NULL,
		n        INTEGER NOT NULL,
		PRIMARY KEY (identity, win, bucket)
	);`,
		// 3: token buckets shared by the fleet (an SES account's send rate).
		`CREATE TABLE rate_buckets (
		key     TEXT PRIMARY KEY,
		tokens  DOUBLE PRECISION NOT NULL,
		last_ms BIGINT NOT NULL
	);`,
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
		time_ms     BIGINT  NOT NULL,
		PRIMARY KEY (queue_id, address_key)
	);
	CREATE INDEX delivery_recipients_address ON delivery_recipients(address_key, time_ms);`,
	}
}

// LockRefresh takes a session-level advisory lock on a connection of its own, held until unlock: the
// lock is the fleet's, and the database releases it if this process dies (its session ends).
func (s *Postgres) LockRefresh(ctx context.Context, key string) (func(), error) {
	conn, err := s.durable.Conn(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	const k = `hashtext('mailgate.lock.' || current_schema() || '.' || $1)`
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock(`+k+`)`, key); err != nil {
		conn.Close()
		return nil, storeErr(err)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_unlock(`+k+`)`, key); err != nil {
			// The session may be broken; dropping the connection ends it, and the lock with it.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		conn.Close()
	}, nil
}
