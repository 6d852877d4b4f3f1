package store

import (
	"context"
	"database/sql"
	"time"
)

// The fleet's upstream budgets (relay/deliver/smtp.Fleet), PostgreSQL only: a SQLite store has one
// instance, whose budgets stay in its memory.
//
//   - Every decision runs in one transaction that first takes a transaction-scoped advisory lock on
//     the identity (and window), so two instances never both see the last free slot or the last
//     message of a minute. Times are the database's clock, so instances on machines whose clocks
//     differ still agree on leases and buckets.
//   - A lease expires unless renewed; expired leases are deleted by the next acquisition (a crashed
//     instance's slots come back). A refused acquisition records demand for a few seconds, which the
//     holders learn when they poll and answer by closing idle connections.
//   - A window is 60 buckets of span/60, as the in-memory window: an event counts until its bucket
//     has left the span. Buckets older than the span are deleted as new ones are written.

// demandMark is how long a refused acquisition marks an identity contended.
const demandMark = 3 * time.Second

const dbNowMS = `(extract(epoch from clock_timestamp()) * 1000)::bigint`

// inLock runs f in a transaction holding the advisory lock named by key.
func (s *Postgres) inLock(ctx context.Context, key string, f func(tx *sql.Tx, nowMS int64) error) error {
	tx, err := s.durable.BeginTx(ctx, nil)
	if err != nil {
		return storeErr(err)
	}
	defer tx.Rollback()
	var now int64
	if err := tx.QueryRowContext(ctx, `SELECT `+dbNowMS+` FROM (SELECT pg_advisory_xact_lock(hashtext('mailgate.budget.' || current_schema() || '.' || $1))) AS locked`, key).Scan(&now); err != nil {
		return storeErr(err)
	}
	if err := f(tx, now); err != nil {
		return storeErr(err)
	}
	return storeErr(tx.Commit())
}

// AcquireLease takes one of limit connection slots of identity for holder for ttl, unless all are
// held; a refusal records the holder's demand.
func (s *Postgres) AcquireLease(ctx context.Context, identity, holder string, limit int, ttl time.Duration) (id int64, ok bool, err error) {
	err = s.inLock(ctx, "slots."+identity, func(tx *sql.Tx, now int64) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM budget_leases WHERE identity = $1 AND expires_ms <= $2`, identity, now); err != nil {
			return err
		}
		var held int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM budget_leases WHERE identity = $1`, identity).Scan(&held); err != nil {
			return err
		}
		if held >= limit {
			// The waiter asks again every poll, so a short mark suffices; a long one would keep the
			// holders at their shares long after the waiter is gone.
			_, err := tx.ExecContext(ctx, `INSERT INTO budget_demand (identity, holder, wanted_until) VALUES ($1, $2, $3)
				ON CONFLICT (identity, holder) DO UPDATE SET wanted_until = excluded.wanted_until`,
				identity, holder, now+min(ttl, demandMark).Milliseconds())
			return err
		}
		ok = true
		return tx.QueryRowContext(ctx, `INSERT INTO budget_leases (identity, holder, expires_ms) VALUES ($1, $2, $3) RETURNING id`,
			identity, holder, now+ttl.Milliseconds()).Scan(&id)
	})
	return id, ok, err
}

// RenewLeases extends the holder's live leases of identity, reports those that had lapsed, and returns
// its share of limit: all of it when no other holder has wanted a slot within demandMark, else limit
// divided by the holders that hold or want slots, rounded up.
func (s *Postgres) RenewLeases(ctx context.Context, identity, holder string, leases []int64, limit int, ttl time.Duration) (share int, lost []int64, err error) {
	err = s.inLock(ctx, "slots."+identity, func(tx *sql.Tx, now int64) error {
		lost = nil
		if len(leases) > 0 {
			// Only leases still alive are renewed: one that lapsed may already be another's slot.
			rows, err := tx.QueryContext(ctx, `UPDATE budget_leases SET expires_ms = $1
				WHERE identity = $2 AND holder = $3 AND id = ANY($4) AND expires_ms > $5 RETURNING id`,
				now+ttl.Milliseconds(), identity, holder, leases, now)
			if err != nil {
				return err
			}
			kept := map[int64]bool{}
			for rows.Next() {
				var id int64
				if err := rows.Scan(&id); err != nil {
					rows.Close()
					return err
				}
				kept[id] = true
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			for _, id := range leases {
				if !kept[id] {
					lost = append(lost, id)
				}
			}
		}
		var others, holders int
		if err := tx.QueryRowContext(ctx, `SELECT
			(SELECT count(*) FROM budget_demand WHERE identity = $1 AND holder <> $2 AND wanted_until > $3),
			(SELECT count(*) FROM (SELECT holder FROM budget_leases WHERE identity = $1 AND expires_ms > $3
				UNION SELECT holder FROM budget_demand WHERE identity = $1 AND wanted_until > $3
				UNION SELECT $2) AS h)`, identity, holder, now).Scan(&others, &holders); err != nil {
			return err
		}
		share = limit
		if others > 0 && holders > 0 {
			share = max(1, (limit+holders-1)/holders)
		}
		return nil
	})
	return share, lost, err
}

// ReleaseLease gives a slot back.
func (s *Postgres) ReleaseLease(ctx context.Context, identity string, lease int64) error {
	_, err := s.durable.ExecContext(ctx, `DELETE FROM budget_leases WHERE identity = $1 AND id = $2`, identity, lease)
	return storeErr(err)
}

// windowBuckets matches relay/deliver/smtp's window: 60 buckets per span.
const windowBuckets = 60

// Reserve admits up to n events of identity's window under limit in the current bucket.
func (s *Postgres) Reserve(ctx context.Context, identity, window string, n, limit int, span time.Duration) (granted int, bucket int64, retryAfter time.Duration, err error) {
	slot := span / windowBuckets
	if slot <= 0 {
		return n, 0, 0, nil
	}
	err = s.inLock(ctx, "window."+window+"."+identity, func(tx *sql.Tx, now int64) error {
		cur := now * int64(time.Millisecond) / int64(slot)
		oldest := cur - windowBuckets + 1
		if _, err := tx.ExecContext(ctx, `DELETE FROM budget_counts WHERE identity = $1 AND win = $2 AND bucket < $3`,
			identity, window, oldest); err != nil {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT bucket, n FROM budget_counts WHERE identity = $1 AND win = $2 AND bucket <= $3
			ORDER BY bucket`, identity, window, cur)
		if err != nil {
			return err
		}
		type counted struct{ bucket, n int64 }
		var live []counted
		used := 0
		for rows.Next() {
			var c counted
			if err := rows.Scan(&c.bucket, &c.n); err != nil {
				rows.Close()
				return err
			}
			live = append(live, c)
			used += int(c.n)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		granted, bucket = min(n, max(0, limit-used)), cur
		if granted > 0 {
			if _, err := tx.ExecContext(ctx, `INSERT INTO budget_counts (identity, win, bucket, n) VALUES ($1, $2, $3, $4)
				ON CONFLICT (identity, win, bucket) DO UPDATE SET n = budget_counts.n + excluded.n`,
				identity, window, cur, granted); err != nil {
				return err
			}
		}
		if granted < n {
			// When enough of the oldest buckets have left the span for the rest (capped at the limit).
			over := used + granted + min(n-granted, limit) - limit
			freed := 0
			retryAfter = slot
			for _, c := range live {
				freed += int(c.n)
				if freed >= over {
					end := time.Duration(c.bucket+windowBuckets) * slot
					retryAfter = max(end-time.Duration(now)*time.Millisecond, time.Millisecond)
					break
				}
			}
		}
		return nil
	})
	return granted, bucket, retryAfter, err
}

// Unreserve gives back n events counted in bucket.
func (s *Postgres) Unreserve(ctx context.Context, identity, window string, n int, bucket int64) error {
	_, err := s.durable.ExecContext(ctx, `UPDATE budget_counts SET n = greatest(0, n - $4)
		WHERE identity = $1 AND win = $2 AND bucket = $3`, identity, window, bucket, n)
	return storeErr(err)
}

// ReserveRate takes n tokens from the fleet's token bucket key (rate a second, at most burst held; n < 0
// gives tokens back) in one statement under the row's lock, and returns the wait its debt implies.
func (s *Postgres) ReserveRate(ctx context.Context, key string, n, rate, burst float64) (time.Duration, error) {
	if rate <= 0 {
		return 0, nil
	}
	var tokens float64
	err := s.durable.QueryRowContext(ctx, `INSERT INTO rate_buckets AS b (key, tokens, last_ms) VALUES ($1, $2::float8 - $4::float8, `+dbNowMS+`)
		ON CONFLICT (key) DO UPDATE SET
			tokens = least($2::float8, b.tokens + greatest(0, excluded.last_ms - b.last_ms) / 1000.0 * $3::float8) - $4::float8,
			last_ms = greatest(b.last_ms, excluded.last_ms)
		RETURNING tokens`, key, burst, rate, n).Scan(&tokens)
	if err != nil {
		return 0, storeErr(err)
	}
	if tokens >= 0 {
		return 0, nil
	}
	return time.Duration(-tokens / rate * float64(time.Second)), nil
}
