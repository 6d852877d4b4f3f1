package store

import (
	"context"
	"database/sql"
	"sync"
	"time"
)

// suppressionRecheck is how long a cached suppression list is trusted before its version is read
// again: a change made by another process (`mailgate bounces remove`, another instance) is seen
// within this time; changes made through this Store are seen at once.
const suppressionRecheck = 500 * time.Millisecond

// suppressionCache holds the whole suppression list in memory. Submission asks for every recipient;
// a SQLite lookup per RCPT (locks, WAL index) was a large share of the relay's system time, while the
// list itself is small (addresses that bounced or complained). Staleness is bounded by a version
// counter that triggers bump on every change of the table, read at most once per suppressionRecheck.
type suppressionCache struct {
	mu      sync.Mutex
	loaded  bool
	version int64
	checked time.Time
	reasons map[string]string // by address key
}

// invalidate makes the next lookup read the version (after a write through this Store).
func (c *suppressionCache) invalidate() {
	c.mu.Lock()
	c.checked = time.Time{}
	c.mu.Unlock()
}

func (c *suppressionCache) lookup(ctx context.Context, db *sql.DB, key string) (string, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.loaded || time.Since(c.checked) >= suppressionRecheck {
		if err := c.refresh(ctx, db); err != nil {
			return "", false, storeErr(err)
		}
	}
	reason, ok := c.reasons[key]
	return reason, ok, nil
}

// refresh reads the version and, when it moved, the whole list.
func (c *suppressionCache) refresh(ctx context.Context, db *sql.DB) error {
	var v int64
	if err := db.QueryRowContext(ctx, `SELECT value FROM counters WHERE name = 'suppression'`).Scan(&v); err != nil {
		return err
	}
	if c.loaded && v == c.version {
		c.checked = time.Now()
		return nil
	}
	rows, err := db.QueryContext(ctx, `SELECT address_key, reason FROM suppression`)
	if err != nil {
		return err
	}
	defer rows.Close()
	reasons := map[string]string{}
	for rows.Next() {
		var k, r string
		if err := rows.Scan(&k, &r); err != nil {
			return err
		}
		reasons[k] = r
	}
	if err := rows.Err(); err != nil {
		return err
	}
	c.reasons, c.version, c.loaded, c.checked = reasons, v, true, time.Now()
	return nil
}
