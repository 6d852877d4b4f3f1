package smtp_test

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/deliver/smtp"
)

// strictPipeliningServer answers MAIL only once the whole group (MAIL, every RCPT, DATA) has arrived
// within a short wait, as RFC 2920 allows a server to: a client that waits for the MAIL reply before
// sending RCPT gets a 503 instead. It records the envelope it received.
func strictPipeliningServer(t *testing.T) (addr string, got chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got = make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				r := bufio.NewReader(c)
				say := func(s string) { fmt.Fprintf(c, "%s\r\n", s) }
				say("220 strict.example ESMTP")
				for {
					_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					cmd := strings.ToUpper(strings.TrimSpace(line))
					switch {
					case strings.HasPrefix(cmd, "EHLO"):
						say("250-strict.example")
						say("250-PIPELINING")
						say("250 SIZE 1000000")
					case strings.HasPrefix(cmd, "MAIL"):
						group := []string{strings.TrimSpace(line)}
						_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
						for !strings.HasPrefix(strings.ToUpper(group[len(group)-1]), "DATA") {
							l, err := r.ReadString('\n')
							if err != nil {
								say("503 5.5.1 expected MAIL, RCPT and DATA as one pipelined group")
								return
							}
							group = append(group, strings.TrimSpace(l))
						}
						say("250 2.1.0 sender ok")
						for range group[1 : len(group)-1] {
							say("250 2.1.5 recipient ok")
						}
						say("354 go ahead")
						_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
						for {
							l, err := r.ReadString('\n')
							if err != nil {
								return
							}
							if l == ".\r\n" {
								break
							}
						}
						got <- strings.Join(group, " | ")
						say("250 2.0.0 queued")
					case cmd == "QUIT":
						say("221 bye")
						return
					default:
						say("250 ok")
					}
				}
			}(c)
		}
	}()
	return ln.Addr().String(), got
}

// TestPipelinedGroup: with PIPELINING offered, MAIL, each RCPT and DATA leave as one group (RFC 2920),
// one round trip where an unpipelined client needs 2 + recipients; twice on the same session.
func TestPipelinedGroup(t *testing.T) {
	addr, got := strictPipeliningServer(t)
	host, port := hostPort(t, addr)
	h := newTransport(t, smtp.Options{Host: host, Port: port})
	for i := range 2 {
		res := mustDeliver(t, h.tr, message("a@example.net", "b@example.org"))
		if !strings.HasPrefix(res.Reply, "250 2.0.0 queued") {
			t.Fatalf("delivery %d: reply %q", i, res.Reply)
		}
		select {
		case g := <-got:
			if !strings.Contains(g, "MAIL FROM:<support@example.com> SIZE=") || !strings.Contains(g, "RCPT TO:<a@example.net> | RCPT TO:<b@example.org> | DATA") {
				t.Fatalf("group %d: %s", i, g)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("delivery %d: the server saw no complete group", i)
		}
	}
}
