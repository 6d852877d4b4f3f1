package smtp_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/deliver/smtp"
	"github.com/mailgate/mailgate/relay/peertest"
)

// waitSinkBaseline returns the sink's session count once peertest's readiness probe (a bare connect)
// has been counted.
func waitSinkBaseline(t *testing.T, sink *peertest.Sink) int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		if sess, _ := sinkSessions(t, sink); sess >= 1 || time.Now().After(deadline) {
			return sess
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func sinkTransport(t *testing.T, sink *peertest.Sink, o smtp.Options) *harness {
	t.Helper()
	o.Host, o.Port = hostPort(t, sink.Addr)
	return newTransport(t, o)
}

// Postfix's smtp-sink offers no STARTTLS: without Force TLS the message goes in plain text; several
// messages share one connection.
func TestSinkDeliversInPlainTextAndReusesTheConnection(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	base := waitSinkBaseline(t, sink)
	h := sinkTransport(t, sink, smtp.Options{})
	for i := range 5 {
		m := message("rcpt1@example.net", "rcpt2@example.org")
		res := mustDeliver(t, h.tr, m)
		if i == 0 && !strings.Contains(res.Reply, "250") {
			t.Fatalf("reply %q", res.Reply)
		}
	}
	sink.WaitCount(t, 5, 10*time.Second)
	msgs := sink.Messages(t)
	if len(msgs) != 5 {
		t.Fatalf("sink has %d messages", len(msgs))
	}
	for _, d := range msgs {
		for _, want := range []string{"X-Mail-Args: <support@example.com>", "X-Rcpt-Args: <rcpt1@example.net>",
			"X-Rcpt-Args: <rcpt2@example.org>", "X-Helo-Args: mailgate.test", "\n.leading dot line\n"} {
			if !strings.Contains(d, want) {
				t.Fatalf("dump lacks %q:\n%s", want, d)
			}
		}
	}
	if got := testutil.ToFloat64(h.met.UpstreamConnections.WithLabelValues("upstream-test", "none")); got != 1 {
		t.Fatalf("upstream connections (tls=none) = %v, want 1 for 5 messages", got)
	}
	h.tr.Close() // QUIT ends the one session; the sink counts it
	deadline := time.Now().Add(5 * time.Second)
	for {
		sess, mesg := sinkSessions(t, sink)
		sess -= base
		if sess >= 1 && mesg == 5 {
			if sess != 1 {
				t.Fatalf("sink saw %d sessions for 5 messages, want 1", sess)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink counters sess=%d mesg=%d", sess, mesg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Force TLS against a server without STARTTLS: nothing is sent, every recipient gets a permanent
// tls_required error the queue bounces at once.
func TestSinkForceTLSWithoutSTARTTLSSendsNothing(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	h := sinkTransport(t, sink, smtp.Options{})
	m := message("a@example.net", "b@example.net")
	m.ForceTLS = true
	res := h.tr.Deliver(ctxTimeout(t, 20*time.Second), m)
	for _, err := range res.Errs {
		re := relayErr(t, err, 554, smtp.ReasonTLSRequired)
		if !relay.IsPermanent(err) || re.Enhanced != relay.CodeEncryptionRequired || !strings.Contains(re.Msg, "does not offer STARTTLS") {
			t.Fatalf("error %v", re)
		}
	}
	// And a message without Force TLS right after still goes.
	mustDeliver(t, h.tr, message("c@example.net"))
	sink.WaitCount(t, 1, 5*time.Second)
	msgs := sink.Messages(t)
	if len(msgs) != 1 || strings.Contains(msgs[0], "a@example.net") {
		t.Fatalf("sink received the Force TLS message: %q", msgs)
	}
	if !strings.Contains(h.logs.String(), "tls_required") {
		t.Fatalf("no warn line for the Force TLS failure:\n%s", h.logs)
	}
}

// smtp-sink's failure injection: hard RCPT refusal, soft refusal after DATA, disconnect at MAIL.
func TestSinkFailureInjection(t *testing.T) {
	t.Run("rcpt 5xx is permanent per recipient", func(t *testing.T) {
		sink := peertest.SMTPSink(t, "-a", "-f", "RCPT")
		h := sinkTransport(t, sink, smtp.Options{})
		m := message("x@example.net", "y@example.net")
		res := h.tr.Deliver(ctxTimeout(t, 20*time.Second), m)
		for _, err := range res.Errs {
			re, ok := relay.AsError(err)
			if !ok || re.Code < 500 || !relay.IsPermanent(err) || re.Reason != smtp.ReasonUpstream || re.Msg == "" {
				t.Fatalf("error %v, want the sink's 5xx", err)
			}
		}
		if res.Reply != "" {
			t.Fatalf("reply %q for a refused message", res.Reply)
		}
		// The connection survived the refusals (RSET) and serves the next message attempt.
		res = h.tr.Deliver(ctxTimeout(t, 20*time.Second), message("z@example.net"))
		if !relay.IsPermanent(res.Errs[0]) {
			t.Fatalf("second message: %v", res.Errs[0])
		}
		if got := testutil.ToFloat64(h.met.UpstreamConnections.WithLabelValues("upstream-test", "none")); got != 1 {
			t.Fatalf("connections = %v, want 1 (reused after RSET)", got)
		}
	})
	t.Run("4xx after DATA is temporary", func(t *testing.T) {
		sink := peertest.SMTPSink(t, "-a", "-r", ".")
		h := sinkTransport(t, sink, smtp.Options{})
		res := h.tr.Deliver(ctxTimeout(t, 20*time.Second), message("x@example.net", "y@example.net"))
		for _, err := range res.Errs {
			re, ok := relay.AsError(err)
			if !ok || re.Code < 400 || re.Code >= 500 || relay.IsPermanent(err) {
				t.Fatalf("error %v, want temporary 4xx", err)
			}
		}
	})
	t.Run("421 at MAIL is temporary", func(t *testing.T) {
		sink := peertest.SMTPSink(t, "-a", "-Q", "MAIL")
		h := sinkTransport(t, sink, smtp.Options{})
		for range 2 { // the second attempt reconnects (the first connection was dropped)
			res := h.tr.Deliver(ctxTimeout(t, 20*time.Second), message("x@example.net"))
			if err := res.Errs[0]; err == nil || relay.IsPermanent(err) {
				t.Fatalf("error %v, want temporary", err)
			}
		}
		if got := testutil.ToFloat64(h.met.UpstreamConnections.WithLabelValues("upstream-test", "none")); got != 2 {
			t.Fatalf("connections = %v, want 2 (a 421 drops the connection)", got)
		}
	})
}

func TestSinkConfiguredSizeLimit(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	h := sinkTransport(t, sink, smtp.Options{MaxMessageBytes: 100})
	res := h.tr.Deliver(ctxTimeout(t, 10*time.Second), message("x@example.net"))
	re := relayErr(t, res.Errs[0], 552, smtp.ReasonSize)
	if re.Enhanced != relay.CodeTooBig {
		t.Fatal(re)
	}
	if sink.Count() != 0 {
		t.Fatal("oversized message was sent")
	}
}

// Shaping with real traffic: the per-minute budget defers the third message, the per-day budget sends
// what fits and defers the rest of the recipients.
func TestSinkShaping(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	h := sinkTransport(t, sink, smtp.Options{MessagesPerMinute: 2, RecipientsPerDay: 5, MaxShapingWait: 50 * time.Millisecond})
	mustDeliver(t, h.tr, message("a@example.net"))
	mustDeliver(t, h.tr, message("b@example.net"))
	res := h.tr.Deliver(ctxTimeout(t, 10*time.Second), message("c@example.net"))
	re := relayErr(t, res.Errs[0], 451, smtp.ReasonRateLimited)
	if re.RetryAfter < 50*time.Second || re.RetryAfter > 62*time.Second {
		t.Fatalf("RetryAfter %v, want about a minute", re.RetryAfter)
	}
	// Two messages took their budget; the deferred third never got one, so it is not a wait.
	var waited dto.Metric
	if err := h.met.ShapingWait.WithLabelValues("upstream-test").(prometheus.Histogram).Write(&waited); err != nil {
		t.Fatal(err)
	}
	if n := waited.GetHistogram().GetSampleCount(); n != 2 {
		t.Fatalf("mailgate_shaping_wait_seconds count = %d, want 2", n)
	}

	h2 := sinkTransport(t, sink, smtp.Options{RecipientsPerDay: 3})
	m := message("r1@example.net", "r2@example.net", "r3@example.net", "r4@example.net", "r5@example.net")
	res = h2.tr.Deliver(ctxTimeout(t, 10*time.Second), m)
	for i, err := range res.Errs {
		if i < 3 && err != nil {
			t.Fatalf("recipient %d: %v", i, err)
		}
		if i >= 3 {
			re := relayErr(t, err, 451, smtp.ReasonRateLimited)
			if re.RetryAfter < 23*time.Hour {
				t.Fatalf("RetryAfter %v, want about a day", re.RetryAfter)
			}
		}
	}
	sink.WaitCount(t, 3, 5*time.Second)
	var last string
	for _, d := range sink.Messages(t) {
		if strings.Contains(d, "<r1@example.net>") {
			last = d
		}
	}
	if !strings.Contains(last, "<r3@example.net>") || strings.Contains(last, "<r4@example.net>") {
		t.Fatalf("per-day budget: sink got\n%s", last)
	}
}

// Idle pooled connections are closed after IdleTimeout; the next message opens a new one.
func TestSinkIdleTimeout(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	base := waitSinkBaseline(t, sink)
	h := sinkTransport(t, sink, smtp.Options{IdleTimeout: 150 * time.Millisecond})
	mustDeliver(t, h.tr, message("a@example.net"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if sess, _ := sinkSessions(t, sink); sess == base+1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("idle connection was not closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	mustDeliver(t, h.tr, message("b@example.net"))
	if got := testutil.ToFloat64(h.met.UpstreamConnections.WithLabelValues("upstream-test", "none")); got != 2 {
		t.Fatalf("connections = %v, want 2", got)
	}
}
