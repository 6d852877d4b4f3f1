package peertest

// PostgreSQL as a peer: a schema of its own per test on the machine's cluster (PostgreSQL 15 on
// 127.0.0.1:5432, trust authentication, database "test"), and a TCP proxy that a test can cut to play
// a database outage without touching the cluster other tests use. The cluster is started with
// pg_ctlcluster when it does not answer (scripts/install-test-deps.sh installs it); a cluster that
// cannot be reached fails the test, never skips it.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresAddr is where the machine's cluster listens.
const PostgresAddr = "127.0.0.1:5432"

// base is the DSN of the test database without a schema.
func pgBase(addr string) string {
	return "postgres://postgres@" + addr + "/test?sslmode=disable"
}

// PostgresSchema creates a fresh schema in the test database, drops it (with everything in it) when the test
// ends, and returns a DSN whose search_path is that schema. Two Opens of the DSN are two instances on
// one shared store.
func PostgresSchema(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := pgConnect(t, ctx)
	defer conn.Close(context.Background())
	b := make([]byte, 6)
	rand.Read(b)
	schema := "mgtest_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatalf("peertest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, pgBase(PostgresAddr))
		if err != nil {
			t.Errorf("peertest: drop schema %s: %v", schema, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("peertest: drop schema %s: %v", schema, err)
		}
	})
	return PostgresDSN(PostgresAddr, schema)
}

// PostgresDSN is the DSN of schema in the test database at addr (the cluster, or a Proxy in front of it).
func PostgresDSN(addr, schema string) string { return pgBase(addr) + "&search_path=" + schema }

// pgConnect reaches the cluster, starting it once if it does not answer.
func pgConnect(t testing.TB, ctx context.Context) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, pgBase(PostgresAddr))
	if err == nil {
		return conn
	}
	versions, _ := filepath.Glob("/etc/postgresql/*")
	if len(versions) == 0 {
		t.Fatalf("peertest: PostgreSQL does not answer on %s and is not installed: run scripts/install-test-deps.sh (%v)", PostgresAddr, err)
	}
	cmd := exec.CommandContext(ctx, "pg_ctlcluster", "--skip-systemctl-redirect", filepath.Base(versions[0]), "main", "start")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		t.Logf("peertest: pg_ctlcluster start: %v", err)
	}
	for {
		conn, err = pgx.Connect(ctx, pgBase(PostgresAddr))
		if err == nil {
			return conn
		}
		select {
		case <-ctx.Done():
			t.Fatalf("peertest: PostgreSQL on %s does not answer: %v", PostgresAddr, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Proxy forwards TCP connections from a loopback port to a target (the PostgreSQL cluster, an SMTP
// peer) until it is cut, counting them. Cut closes every forwarded connection and refuses new ones
// (the listener stays bound, so the address does not change); Restore lets connections through again.
type Proxy struct {
	ln            net.Listener
	target        string
	mu            sync.Mutex
	cut           bool
	stalled       bool // Stall: no byte flows until Restore
	conns         map[net.Conn]struct{}
	wg            sync.WaitGroup
	accepted      int // client connections taken
	open, maxOpen int // forwarded connections open now, and the most at once
}

// PostgresProxy starts a proxy in front of the cluster; it stops when the test ends.
func PostgresProxy(t testing.TB) *Proxy {
	t.Helper()
	return TCPProxy(t, PostgresAddr)
}

// TCPProxy starts a proxy in front of target; it stops when the test ends.
func TCPProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// Addr is the proxy's address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Accepted is how many connections the proxy has taken so far.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// MaxOpen is the most connections that were forwarded at once.
func (p *Proxy) MaxOpen() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxOpen
}

// Cut closes every forwarded connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
}

// Restore lets connections and bytes through again (after Cut or Stall).
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut, p.stalled = false, false
	p.mu.Unlock()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.accepted++
		p.mu.Unlock()
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		if !p.track(c, up) {
			continue
		}
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

// track registers a forwarded pair, unless the proxy was cut meanwhile.
func (p *Proxy) track(c, up net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		c.Close()
		up.Close()
		return false
	}
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.open++
	p.maxOpen = max(p.maxOpen, p.open)
	return true
}

// Stall stops every byte in both directions, on open connections and new ones, without closing
// anything — a network partition, which no RST announces — until Restore.
func (p *Proxy) Stall() {
	p.mu.Lock()
	p.stalled = true
	p.mu.Unlock()
}

// flowing waits while the proxy is stalled; false when it was cut meanwhile.
func (p *Proxy) flowing() bool {
	for {
		p.mu.Lock()
		stalled, cut := p.stalled, p.cut
		p.mu.Unlock()
		if cut {
			return false
		}
		if !stalled {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pipe copies one direction; the first direction to end closes both and counts the pair closed.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.flowing() {
				break
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
	p.mu.Lock()
	if _, ok := p.conns[src]; ok {
		p.open--
	}
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// String is for test logs.
func (p *Proxy) String() string { return fmt.Sprintf("proxy %s -> %s", p.Addr(), p.target) }
