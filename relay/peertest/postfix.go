package peertest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Postfix is a private instance of Postfix's smtpd — its own configuration, queue and log under a
// temporary directory, never the system's — that relays everything it accepts to an smtp-sink. It is
// the real peer for what smtp-sink and Node's smtp-server do not do: CHUNKING (BDAT, RFC 3030, which
// Postfix offers with PIPELINING), and refusals that keep transaction state the way a production MTA
// does (a refused MAIL leaves no transaction; every RCPT refused leaves MAIL open until RSET).
type Postfix struct {
	Addr string // host:port of its smtpd
	Sink *Sink  // where it relays what it accepted
	Log  string // its mail log
	conf string
	pid  int
}

// PostfixOptions shape the instance's refusals.
type PostfixOptions struct {
	// SenderAccess and RecipientAccess are access-table lines ("address action", e.g.
	// "unknown@example.net 550 5.1.1 User unknown" or "later@example.net 451 4.2.0 Try later"),
	// applied at MAIL and at RCPT.
	SenderAccess, RecipientAccess []string
	// HeaderChecks are header_checks lines (regexp), e.g. "/^Subject: .*SPAM/ REJECT 5.7.1 Spam":
	// a matching message is refused after its last byte.
	HeaderChecks []string
}

// StartPostfix starts an instance on a free loopback port and stops it (by its master's PID) when the
// test ends. Postfix's master must start as root.
func StartPostfix(t testing.TB, o PostfixOptions) *Postfix {
	t.Helper()
	need(t, "/usr/sbin/postfix")
	if os.Geteuid() != 0 {
		t.Fatal("peer Postfix must be started as root (its master drops privileges to the postfix user)")
	}
	sink := SMTPSink(t)
	// Postfix's daemons run as the postfix user: the instance lives directly under the system temp dir
	// (t.TempDir's parents are 0700).
	dir, err := os.MkdirTemp("", "mailgate-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	_ = os.Chmod(dir, 0o755)
	conf, queue, data := filepath.Join(dir, "etc"), filepath.Join(dir, "queue"), filepath.Join(dir, "data")
	for _, d := range []string{conf, queue, data} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, lines []string) string {
		p := filepath.Join(conf, name)
		if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("master.cf", []string{string(master)})
	port := FreePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	logFile := filepath.Join(dir, "maillog")
	write("main.cf", []string{
		"compatibility_level = 3.6",
		"queue_directory = " + queue,
		"data_directory = " + data,
		"command_directory = /usr/sbin",
		"daemon_directory = /usr/lib/postfix/sbin",
		"shlib_directory = /usr/lib/postfix",
		"meta_directory = /etc/postfix",
		"mail_owner = postfix",
		"setgid_group = postdrop",
		"myhostname = postfix.peer.invalid",
		"mydestination =",
		"local_recipient_maps =",
		"local_transport = error:5.1.1 local delivery disabled",
		"alias_maps =",
		"alias_database =",
		"inet_interfaces = 127.0.0.1",
		"inet_protocols = ipv4",
		"mynetworks = 127.0.0.0/8",
		"relayhost = [" + strings.Replace(sink.Addr, ":", "]:", 1),
		"smtp_tls_security_level = none",
		"smtputf8_enable = no",
		"smtpd_peername_lookup = no",
		// Refuse at the command the restriction is about (a refused sender at MAIL), not all at RCPT.
		"smtpd_delay_reject = no",
		"smtpd_sender_restrictions = check_sender_access texthash:" + write("sender_access", append(o.SenderAccess, "")),
		"smtpd_recipient_restrictions = check_recipient_access texthash:" + write("recipient_access", append(o.RecipientAccess, "")) + ", permit_mynetworks, reject",
		"smtpd_relay_restrictions = permit_mynetworks, reject",
		"header_checks = regexp:" + write("header_checks", append(o.HeaderChecks, "")),
		"maillog_file = " + logFile,
		"maillog_file_prefixes = " + dir,
	})
	run := func(args ...string) {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("postconf", "-c", conf, "-F", "*/*/chroot = n")
	run("postconf", "-c", conf, "-M#", "smtp/inet")
	run("postconf", "-c", conf, "-M", fmt.Sprintf("%s/inet=%s inet n - n - - smtpd", addr, addr))
	run("postfix", "-c", conf, "set-permissions")
	run("postfix", "-c", conf, "start")
	p := &Postfix{Addr: addr, Sink: sink, Log: logFile, conf: conf}
	for i := 0; i < 100 && p.pid == 0; i++ { // the master writes its PID once it has daemonised
		if pidText, err := os.ReadFile(filepath.Join(queue, "pid", "master.pid")); err == nil {
			p.pid, _ = strconv.Atoi(strings.TrimSpace(string(pidText)))
		}
		if p.pid == 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	t.Cleanup(p.stop)
	if p.pid == 0 {
		t.Fatal("Postfix started without writing its master PID")
	}
	if err := WaitPort(addr, 20*time.Second); err != nil {
		t.Fatalf("Postfix did not open %s: %v\n%s", addr, err, p.MailLog())
	}
	return p
}

// MailLog is the instance's log so far.
func (p *Postfix) MailLog() string {
	b, _ := os.ReadFile(p.Log)
	return string(b)
}

// stop ends the instance by its master's PID (the master stops its children) and waits for it.
func (p *Postfix) stop() {
	if p.pid == 0 {
		return
	}
	_ = syscall.Kill(p.pid, syscall.SIGTERM)
	for i := 0; i < 100 && syscall.Kill(p.pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(p.pid, syscall.SIGKILL)
	p.pid = 0
}

// Delivered returns the messages the instance has relayed to its sink so far, waiting up to timeout
// for want of them (Postfix queues before it relays).
func (p *Postfix) Delivered(t testing.TB, want int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msgs := p.Sink.Messages(t)
		if len(msgs) >= want || time.Now().After(deadline) {
			if len(msgs) < want {
				t.Fatalf("Postfix relayed %d messages, want %d; its log:\n%s", len(msgs), want, tail(p.MailLog(), 40))
			}
			return msgs
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := bytes.Split([]byte(s), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// Sessions waits up to timeout for want client sessions that sent MAIL to have ended, and returns the
// command counts smtpd logged for each as it disconnected ("disconnect from … ehlo=1 mail=10/11
// rcpt=8/12 bdat=7/11 rset=4 quit=1 commands=…"): per command, "accepted/sent", or one number when all
// were accepted; a command never sent is absent.
func (p *Postfix) Sessions(t testing.TB, want int, timeout time.Duration) []map[string]string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var out []map[string]string
		for _, line := range strings.Split(p.MailLog(), "\n") {
			if !strings.Contains(line, "disconnect from") || !strings.Contains(line, " mail=") {
				continue
			}
			counts := map[string]string{}
			for _, m := range commandCount.FindAllStringSubmatch(line, -1) {
				counts[m[1]] = m[2]
			}
			out = append(out, counts)
		}
		if len(out) >= want || time.Now().After(deadline) {
			if len(out) < want {
				t.Fatalf("Postfix logged %d sessions that sent mail, want %d; its log:\n%s", len(out), want, tail(p.MailLog(), 40))
			}
			return out
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// commandCount is one "command=count" of smtpd's disconnect line.
var commandCount = regexp.MustCompile(`(\w+)=([0-9/]+)`)
