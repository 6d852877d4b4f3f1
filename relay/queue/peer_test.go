package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/smtp"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/peertest"
	"github.com/mailgate/mailgate/relay/store"
)

// sinkTransport is a minimal SMTP transport written for these tests (the real one is relay/deliver/smtp):
// one connection per attempt with net/smtp, per-recipient RCPT results, the connection closed when ctx ends.
type sinkTransport struct{ addr string }

func (s sinkTransport) Deliver(ctx context.Context, m *relay.Message) relay.Result {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return relay.Failed(len(m.Recipients), err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c, err := smtp.NewClient(conn, "127.0.0.1")
	if err != nil {
		conn.Close()
		return relay.Failed(len(m.Recipients), err)
	}
	defer c.Close()
	if err := c.Mail(m.MailFrom); err != nil {
		return relay.Failed(len(m.Recipients), smtpErr(err))
	}
	errs := make([]error, len(m.Recipients))
	accepted := 0
	for i, r := range m.Recipients {
		if err := c.Rcpt(r); err != nil {
			errs[i] = smtpErr(err)
			continue
		}
		accepted++
	}
	if accepted == 0 {
		return relay.Result{Errs: errs}
	}
	w, err := c.Data()
	if err != nil {
		return relay.Failed(len(m.Recipients), smtpErr(err))
	}
	body, err := m.Open()
	if err != nil {
		return relay.Failed(len(m.Recipients), err)
	}
	defer body.Close()
	if _, err := io.Copy(w, body); err != nil {
		return relay.Failed(len(m.Recipients), err)
	}
	if err := w.Close(); err != nil {
		e := smtpErr(err)
		for i := range errs {
			if errs[i] == nil {
				errs[i] = e
			}
		}
		return relay.Result{Errs: errs}
	}
	c.Quit()
	return relay.Result{Reply: "250 accepted by smtp-sink", Errs: errs}
}

// smtpErr turns an SMTP reply error into the relay error that carries its permanence.
func smtpErr(err error) error {
	var te *textproto.Error
	if errors.As(err, &te) {
		enh := relay.EnhancedCode(fmt.Sprintf("%d.0.0", te.Code/100))
		if f := strings.Fields(te.Msg); len(f) > 0 {
			if _, ok := relay.EnhancedCode(f[0]).Parts(); ok {
				enh = relay.EnhancedCode(f[0])
			}
		}
		return relay.Wrap(err, te.Code, enh, "", te.Msg)
	}
	return err
}

func TestDeliveryToSMTPSink(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	h := open(t, t.TempDir(), TransportMap{"upstream": sinkTransport{addr: sink.Addr}}, nil)
	h.run(t)
	const n = 10
	for i := range n {
		enqueue(t, h.q, fmt.Sprintf("Subject: queued %d\r\n\r\nbody %d\r\n", i, i), "one@example.net", "two@example.net")
	}
	sink.WaitCount(t, n, 20*time.Second)
	waitFor(t, "empty spool", 10*time.Second, func() bool { return len(h.q.List()) == 0 })
	msgs := sink.Messages(t)
	if len(msgs) != n {
		t.Fatalf("sink dumped %d messages, want %d", len(msgs), n)
	}
	for _, m := range msgs {
		if !strings.Contains(m, "bounce@example.com") || !strings.Contains(m, "one@example.net") ||
			!strings.Contains(m, "two@example.net") || !strings.Contains(m, "Subject: queued ") {
			t.Errorf("sink dump lacks the envelope or message:\n%s", m)
		}
	}
}

// The queue's consumer interfaces are what relay/store provides.
var (
	_ Bounces     = (*store.SQLite)(nil)
	_ DeliveryLog = (*store.SQLite)(nil)
)

// TestSMTPSinkRcptRefusalBounces: smtp-sink refuses RCPT with "500 5.3.0 Error: command failed"; the
// bounce lands in the real SQLite store and the delivery log says bounced, but the address is not
// suppressed: 5.3.0 says nothing against the address (only address status codes suppress, see
// fault_test.go).
func TestSMTPSinkRcptRefusalBounces(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a", "-f", "RCPT")
	st, err := store.Open(filepath.Join(t.TempDir(), "mailgate.db"))
	must(t, err)
	defer st.Close()
	h := open(t, t.TempDir(), TransportMap{"upstream": sinkTransport{addr: sink.Addr}}, func(o *Options) {
		o.Bounces, o.DeliveryLog = st, st
	})
	h.run(t)
	id := enqueue(t, h.q, "Subject: x\r\n\r\nx\r\n", "Nobody@example.net")
	waitFor(t, "removal", 10*time.Second, func() bool { _, ok := h.q.Get(id); return !ok })
	ctx := context.Background()
	bs, err := st.Bounces(ctx, store.BounceFilter{Address: "nobody@example.net"})
	if err != nil || len(bs) != 1 || bs[0].Code < 500 || bs[0].QueueID != id || bs[0].Ticket != "123456" || bs[0].Suppressed {
		t.Fatalf("bounces %+v %v", bs, err)
	}
	if reason, ok, err := st.Suppressed(ctx, "NOBODY@example.net"); ok || err != nil {
		t.Errorf("suppressed after a bounce that is not the address's fault: %q %v %v", reason, ok, err)
	}
	// Nobody waits for delivery-log rows: the outcome's row is written within the writer's linger.
	var d []relay.DeliveryRecord
	waitFor(t, "the delivery log row", 5*time.Second, func() bool {
		d, _ = st.Deliveries(ctx, store.DeliveryFilter{QueueID: id})
		return len(d) == 1 && d[0].Status != "queued"
	})
	if d[0].Status != "bounced" || d[0].Attempts != 1 {
		t.Errorf("delivery log %+v", d)
	}
}

func TestSMTPSinkTemporaryFailureRetries(t *testing.T) {
	// Nothing listens yet: the first attempts fail at connect and are deferred; then the sink starts.
	addr := fmt.Sprintf("127.0.0.1:%d", peertest.FreePort(t))
	h := open(t, t.TempDir(), TransportMap{"upstream": sinkTransport{addr: addr}}, nil)
	h.run(t)
	id := enqueue(t, h.q, "Subject: x\r\n\r\nx\r\n", "later@example.net")
	waitFor(t, "deferred attempts", 5*time.Second, func() bool { e, _ := h.q.Get(id); return e.Attempts >= 2 })
	if e, _ := h.q.Get(id); !strings.Contains(e.LastError, "connection refused") {
		t.Errorf("last error %q", e.LastError)
	}
	sink := peertest.Start(t, "smtp-sink", addr, nil, sinkArgv(addr)...)
	_ = sink
	waitFor(t, "delivery after the upstream came up", 10*time.Second, func() bool { _, ok := h.q.Get(id); return !ok })
	if len(h.rec.Bounces()) != 0 {
		t.Error("temporary failures bounced")
	}
}

func sinkArgv(addr string) []string {
	argv := []string{"/usr/sbin/smtp-sink", "-a"}
	if isRoot() {
		argv = append(argv, "-u", "nobody")
	}
	return append(argv, addr, "64")
}

func isRoot() bool { return os.Geteuid() == 0 }
