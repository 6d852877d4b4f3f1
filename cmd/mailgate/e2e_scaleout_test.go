package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5"

	"github.com/mailgate/mailgate/relay/peertest"
)

// Scale-out: several mailgate processes on one PostgreSQL store.

// nodeChannel relays the Support channel to the Node smtp-server at addr (AUTH LOGIN user/pass,
// maxConns connections for the mailbox).
func nodeChannel(addr, caFile, extra string) string {
	host, port, _ := net.SplitHostPort(addr)
	return `
smtp_servers:
  - name: up
    host: ` + host + `
    port: ` + port + `
    auth: login
    username: user
    password: env:MG_UP_PASSWORD
    ca_file: ` + caFile + extra + `
channels:
  - name: Support
    from: support@example.com
    business_unit: BU
    transport: up
    outbound_flow: true
` + supportRoles
}

// onPostgres points the instance's store at the PostgreSQL DSN (given through the environment, as a
// secret reference).
func (in *instance) onPostgres(dsn string) {
	in.t.Helper()
	in.rewriteConfig("store:\n  path: "+in.dir+"/mailgate.db\n", "store:\n  postgres: env:MG_PG_DSN\n")
	in.extraEnv = append(in.extraEnv, "MG_PG_DSN="+dsn, "MG_UP_PASSWORD=pass")
}

// rcptProbe is an authenticated submission session on an instance, kept open, that asks RCPT for an
// address as often as the test likes.
type rcptProbe struct {
	t *testing.T
	c *gosmtp.Client
}

func newRcptProbe(t *testing.T, in *instance) *rcptProbe {
	t.Helper()
	c, err := gosmtp.DialStartTLS(in.smtp, &tls.Config{RootCAs: in.cert.Pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Auth(sasl.NewLoginClient("alice", alicePassword)); err != nil {
		t.Fatal(err)
	}
	return &rcptProbe{t: t, c: c}
}

// rcpt opens a transaction, asks RCPT TO addr and resets: nil when accepted, the reply otherwise.
func (p *rcptProbe) rcpt(addr string) error {
	p.t.Helper()
	if err := p.c.Mail("alice@example.com", nil); err != nil {
		p.t.Fatalf("MAIL: %v", err)
	}
	err := p.c.Rcpt(addr, nil)
	if rerr := p.c.Reset(); rerr != nil {
		p.t.Fatalf("RSET: %v", rerr)
	}
	return err
}

// TestSharedStoreSuppressionAcrossInstances: three instances on one PostgreSQL. A recipient the
// upstream refuses with 550 5.1.1 through instance A is bounced and suppressed; the other two refuse it
// at RCPT within 1 s of the bounce being recorded (the figure is logged), and an address that was
// never bounced stays accepted everywhere.
func TestSharedStoreSuppressionAcrossInstances(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	node := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{NoPlain: true,
		Rules: []peertest.NodeRule{{At: "rcpt", Match: "^gone@", Reply: "550 5.1.1 User unknown"}}})
	var ins []*instance
	for range 3 {
		in := newInstance(t, nodeChannel(node.Addr, node.Cert.CertFile, ""))
		in.onPostgres(dsn)
		in.start()
		ins = append(ins, in)
	}
	probes := []*rcptProbe{newRcptProbe(t, ins[1]), newRcptProbe(t, ins[2])}
	for i, p := range probes {
		if err := p.rcpt("gone@example.net"); err != nil {
			t.Fatalf("instance %d refused gone@ before any bounce: %v", i+1, err)
		}
	}
	if out, code := ins[0].swaks("--to", "gone@example.net", "--h-From", "support@example.com", "--body", "hello"); code != 0 {
		t.Fatalf("submission to A: %d\n%s", code, out)
	}
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var bouncedMS int64
	waitFor(t, 20*time.Second, "the bounce recorded in the shared store", func() bool {
		err := conn.QueryRow(context.Background(), `SELECT time_ms FROM bounces WHERE address_key = 'gone@example.net' AND suppressed`).Scan(&bouncedMS)
		return err == nil
	})
	bounced := time.UnixMilli(bouncedMS)
	for i, p := range probes {
		for {
			err := p.rcpt("gone@example.net")
			if err != nil {
				var se *gosmtp.SMTPError
				if !asSMTP(err, &se) || se.Code != 550 || !strings.Contains(se.Message, "suppression list") {
					t.Fatalf("instance %d refused with %v, want 550 suppression", i+1, err)
				}
				d := time.Since(bounced)
				t.Logf("instance %d refuses the address %v after instance A recorded its bounce", i+1, d)
				if d > time.Second {
					t.Errorf("instance %d took %v (> 1 s) to refuse a suppressed address", i+1, d)
				}
				break
			}
			if time.Since(bounced) > 5*time.Second {
				t.Fatalf("instance %d still accepts the suppressed address 5 s after the bounce", i+1)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := p.rcpt("fine@example.net"); err != nil {
			t.Errorf("instance %d refuses an address that never bounced: %v", i+1, err)
		}
	}
	// `mailgate bounces remove` through any instance's config lifts it for all.
	if out, code := ins[2].mailgate("bounces", "remove", "--config", ins[2].config, "gone@example.net"); code != 0 {
		t.Fatalf("bounces remove: %d\n%s", code, out)
	}
	waitFor(t, 2*time.Second, "the lifted suppression on instance B", func() bool { return probes[0].rcpt("gone@example.net") == nil })
}

func asSMTP(err error, se **gosmtp.SMTPError) bool {
	e, ok := err.(*gosmtp.SMTPError)
	if ok {
		*se = e
	}
	return ok
}

// TestSharedStoreOutage: the instance reaches PostgreSQL through a proxy the test cuts. While it is
// cut, a submission gets 451 4.3.0 at RCPT (never an accept without a suppression answer), /readyz
// fails on the store, and queued mail waits: the upstream sees nothing and nothing is bounced, though
// the upstream is up. When the proxy is restored the instance recovers by itself: the held mail is
// delivered, the bad address bounced and suppressed, and submissions are accepted again.
func TestSharedStoreOutage(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	proxy := peertest.PostgresProxy(t)
	upstream := "127.0.0.1:" + strconv.Itoa(peertest.FreePort(t))
	cert := peertest.SelfSignedCert(t)
	in := newInstance(t, nodeChannel(upstream, cert.CertFile, ""))
	// The password is not needed (trust authentication) but must not show anywhere.
	in.onPostgres(strings.Replace(strings.Replace(dsn, peertest.PostgresAddr, proxy.Addr(), 1), "postgres@", "postgres:s3cret@", 1))
	in.start()

	// Accepted while the store is up and the upstream down: both wait in the queue, retrying.
	for _, to := range []string{"customer@example.net", "gone@example.net"} {
		if out, code := in.swaks("--to", to, "--h-From", "support@example.com", "--body", "held"); code != 0 {
			t.Fatalf("submission to %s: %d\n%s", to, code, out)
		}
	}
	proxy.Cut()
	waitFor(t, 15*time.Second, "/readyz failing on the store", func() bool {
		code, body := httpGet(t, "http://"+in.admin+"/readyz")
		return code == 503 && strings.Contains(body, "FAIL store")
	})
	out, code := in.swaks("--to", "new@example.net", "--h-From", "support@example.com", "--body", "during")
	if code == 0 || !strings.Contains(out, "451 4.3.0") {
		t.Fatalf("submission during the outage: exit %d, want 451 4.3.0 at RCPT\n%s", code, out)
	}
	// The upstream comes up during the outage: the held mail must still wait for the store.
	node := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{Addr: upstream, Cert: cert, NoPlain: true,
		Rules: []peertest.NodeRule{{At: "rcpt", Match: "^gone@", Reply: "550 5.1.1 User unknown"}}})
	waitFor(t, 10*time.Second, "the queue to hold deliveries", func() bool {
		return strings.Contains(in.logs(), "deliveries held")
	})
	deadline := time.Now().Add(3 * time.Second) // several retry_max periods: attempts would have happened
	for time.Now().Before(deadline) {
		if n := len(node.Accepted(t)); n != 0 {
			t.Fatalf("the upstream received %d message(s) while the store was down", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if strings.Contains(in.logs(), "gone@example.net") && strings.Contains(in.logs(), "msg=bounced") {
		t.Fatalf("bounced while the store was down:\n%s", in.logs())
	}

	proxy.Restore()
	waitFor(t, 20*time.Second, "the held message delivered", func() bool { return len(node.Accepted(t)) == 1 })
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	waitFor(t, 20*time.Second, "gone@ bounced and suppressed in the store", func() bool {
		var n int
		err := conn.QueryRow(context.Background(), `SELECT count(*) FROM suppression WHERE address_key = 'gone@example.net'`).Scan(&n)
		return err == nil && n == 1
	})
	waitFor(t, 10*time.Second, "/readyz ok again", func() bool {
		code, _ := httpGet(t, "http://"+in.admin+"/readyz")
		return code == 200
	})
	if out, code := in.swaks("--to", "new@example.net", "--h-From", "support@example.com", "--body", "after"); code != 0 {
		t.Fatalf("submission after recovery: %d\n%s", code, out)
	}
	if strings.Contains(in.logs(), "s3cret") {
		t.Fatal("the DSN's password reached the log")
	}
}

// TestFleetBudgetsHoldForTheMailbox: three instances on one PostgreSQL relay to one mailbox of a Node
// smtp-server whose configured limits are 2 connections and 12 messages a minute. Each instance alone
// would open 2 and send 12 (6 and 36 for the three): the upstream, seen through a counting proxy, never
// has more than 2 connections open at once, and takes 12 messages in the minute — the rest wait
// (deferred, none bounced).
func TestFleetBudgetsHoldForTheMailbox(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	node := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{NoPlain: true})
	counting := peertest.TCPProxy(t, node.Addr)
	var ins []*instance
	for range 3 {
		in := newInstance(t, nodeChannel(counting.Addr(), node.Cert.CertFile, "\n    max_connections: 2\n    messages_per_minute: 12"))
		in.onPostgres(dsn)
		in.start()
		ins = append(ins, in)
	}
	const each = 8
	for i := range each * len(ins) {
		in := ins[i%len(ins)]
		if out, code := in.swaks("--to", "c"+strconv.Itoa(i)+"@example.net", "--h-From", "support@example.com", "--body", "fleet"); code != 0 {
			t.Fatalf("submission %d: %d\n%s", i, code, out)
		}
	}
	waitFor(t, 30*time.Second, "12 messages at the upstream", func() bool { return len(node.Accepted(t)) >= 12 })
	// Each instance's own windows would let the rest through within seconds: they must wait.
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		if n := len(node.Accepted(t)); n > 12 {
			t.Fatalf("the upstream took %d messages within the minute; the fleet's limit is 12", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if m := counting.MaxOpen(); m > 2 || m < 1 {
		t.Fatalf("the upstream saw %d connections at once; the fleet's limit is 2", m)
	}
	t.Logf("upstream: %d messages, at most %d connections at once (%d accepted by the proxy)", len(node.Accepted(t)), counting.MaxOpen(), counting.Accepted())
	for i, in := range ins {
		if strings.Contains(in.logs(), "msg=bounced") {
			t.Errorf("instance %d bounced a message that only had to wait:\n%s", i, in.logs())
		}
	}
}

// TestInstanceNameAndDrain: /readyz and `mailgate queue` name the instance; `mailgate drain` stops its
// submission listener at once (new sessions are refused, /readyz fails "draining") while the queue goes
// on delivering, and returns once the queue is empty — not before.
func TestInstanceNameAndDrain(t *testing.T) {
	upstream := "127.0.0.1:" + strconv.Itoa(peertest.FreePort(t))
	cert := peertest.SelfSignedCert(t)
	in := newInstance(t, nodeChannel(upstream, cert.CertFile, ""))
	in.rewriteConfig("hostname: mailgate.test\n", "hostname: mailgate.test\ninstance: mg-east-1\n")
	in.extraEnv = append(in.extraEnv, "MG_UP_PASSWORD=pass")
	in.start()
	if code, body := httpGet(t, "http://"+in.admin+"/readyz"); code != 200 || !strings.HasPrefix(body, "instance mg-east-1\n") {
		t.Fatalf("/readyz = %d\n%s", code, body)
	}
	// Queued while the upstream is down: it waits in the queue.
	if out, code := in.swaks("--to", "customer@example.net", "--h-From", "support@example.com", "--body", "before the restart"); code != 0 {
		t.Fatalf("submission: %d\n%s", code, out)
	}
	if out, code := in.mailgate("queue", "list", "--config", in.config); code != 0 || !strings.Contains(out, "instance mg-east-1 (admin "+in.admin+"): 1 queued") {
		t.Fatalf("queue list: %d\n%s", code, out)
	}
	out, code := in.mailgate("drain", "--config", in.config, "--wait", "1s")
	if code != 1 || !strings.Contains(out, "instance mg-east-1") || !strings.Contains(out, "1 message(s) still queued") {
		t.Fatalf("drain with mail that cannot go yet: exit %d, want 1 naming what is left\n%s", code, out)
	}
	if c, err := net.DialTimeout("tcp", in.smtp, time.Second); err == nil {
		c.Close()
		t.Fatal("the submission listener still accepts connections while draining")
	}
	if code, body := httpGet(t, "http://"+in.admin+"/readyz"); code != 503 || !strings.Contains(body, "FAIL draining") {
		t.Fatalf("/readyz while draining = %d\n%s", code, body)
	}
	node := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{Addr: upstream, Cert: cert, NoPlain: true})
	out, code = in.mailgate("drain", "--config", in.config, "--wait", "30s")
	if code != 0 || !strings.Contains(out, "instance mg-east-1: queue empty; safe to stop") {
		t.Fatalf("drain: exit %d\n%s", code, out)
	}
	if n := len(node.Accepted(t)); n != 1 {
		t.Fatalf("the upstream got %d messages, want the queued one", n)
	}
}

// TestFleetOneTokenRequest: three instances on one PostgreSQL, each relaying 1000 messages to the
// XOAUTH2-checking Node smtp-server with client credentials, cost one token request in all: the first
// instance to need a token requests it under the fleet's lock and stores it sealed (the instances seal
// with one keyring); the others adopt it.
func TestFleetOneTokenRequest(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	peers := startOAuthPeers(t, false)
	keyring := filepath.Join(t.TempDir(), "keyring.json")
	var ins []*instance
	for i := range 3 {
		in := newInstance(t, "\nkms:\n  keyring: "+keyring+peers.server("    messages_per_minute: 1000000\n    recipients_per_day: 1000000\n", "")+relayChannels("m365"))
		in.extraEnv = []string{"MG_E2E_CLIENT_SECRET=" + clientSecret}
		if i == 0 {
			if out, code := in.mailgate("secret", "keygen", keyring); code != 0 {
				t.Fatalf("secret keygen: %d\n%s", code, out)
			}
		}
		in.onPostgres(dsn)
		in.start()
		ins = append(ins, in)
	}
	const each = 1000
	for i := range each {
		for k, in := range ins {
			out := smtpConversation(t, in.smtp, fmt.Sprintf("From: support@example.com\r\nTo: c%d@example.net\r\nSubject: fleet %d/%d\r\n\r\nbody\r\n.\r\n", i, k, i))
			if !strings.Contains(out, "250 2.0.0 queued") {
				t.Fatalf("instance %d, message %d refused:\n%s", k, i, out)
			}
		}
	}
	waitFor(t, 180*time.Second, "3000 messages at the XOAUTH2 upstream", func() bool { return len(peers.node.Accepted(t)) >= 3*each })
	if got, _ := peers.proxy.counts(); got != 1 {
		t.Fatalf("3 instances × %d messages cost %d token requests, want exactly 1", each, got)
	}
	adopted := 0
	for _, in := range ins {
		adopted += strings.Count(in.logs(), "oauth token adopted from another instance")
	}
	if adopted != 2 {
		t.Errorf("%d instances adopted the stored token, want the 2 that did not request it", adopted)
	}
}
