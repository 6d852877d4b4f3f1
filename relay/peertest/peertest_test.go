package peertest

import (
	"net/smtp"
	"strings"
	"testing"
	"time"
)

// TestSinkReceives checks the harness itself against the real smtp-sink: a message sent to it is
// counted and dumped with its envelope.
func TestSinkReceives(t *testing.T) {
	s := SMTPSink(t, "-a")
	msg := "From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nbody\r\n"
	if err := smtp.SendMail(s.Addr, nil, "a@example.com", []string{"b@example.net"}, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	s.WaitCount(t, 1, 5*time.Second)
	m := s.Messages(t)
	if len(m) != 1 || !strings.Contains(m[0], "b@example.net") || !strings.Contains(m[0], "Subject: hi") {
		t.Fatalf("dump = %q", m)
	}
}

// TestNodeSMTPStarts checks that the Node upstream starts and offers STARTTLS.
func TestNodeSMTPStarts(t *testing.T) {
	n := NodeSMTPServer(t, NodeSMTPOptions{})
	c, err := smtp.Dial(n.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Fatal("no STARTTLS")
	}
}
