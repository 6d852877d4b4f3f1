package smtp_test

import (
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/deliver/smtp"
	"github.com/mailgate/mailgate/relay/peertest"
)

// tenKiB is a 10 KiB message body, the size the relay benchmarks use.
var tenKiB = "From: support@example.com\r\nTo: rcpt@example.net\r\nSubject: bench\r\n\r\n" +
	strings.Repeat(strings.Repeat("b", 78)+"\r\n", 10240/80)

// BenchmarkDeliverReusedConnection sends 10 KiB messages one after another to Postfix's smtp-sink over
// one pooled connection: the per-message cost of the transport itself (MAIL, RCPT, DATA; no reconnect).
func BenchmarkDeliverReusedConnection(b *testing.B) {
	sink := peertest.SMTPSink(b, "-a")
	host, port := hostPort(b, sink.Addr)
	h := newTransport(b, smtp.Options{Host: host, Port: port, MaxConnections: 1})
	ctx := ctxTimeout(b, 10*time.Minute)
	b.SetBytes(int64(len(tenKiB)))
	b.ResetTimer()
	for b.Loop() {
		res := h.tr.Deliver(ctx, bodyMessage(tenKiB, "rcpt@example.net"))
		if res.Errs[0] != nil {
			b.Fatal(res.Errs[0])
		}
	}
}

// BenchmarkDeliverParallel runs deliveries from many goroutines through a pool of 4 connections.
func BenchmarkDeliverParallel(b *testing.B) {
	sink := peertest.SMTPSink(b, "-a")
	host, port := hostPort(b, sink.Addr)
	h := newTransport(b, smtp.Options{Host: host, Port: port, MaxConnections: 4})
	ctx := ctxTimeout(b, 10*time.Minute)
	b.SetBytes(int64(len(tenKiB)))
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res := h.tr.Deliver(ctx, bodyMessage(tenKiB, "rcpt@example.net"))
			if res.Errs[0] != nil {
				b.Error(res.Errs[0])
				return
			}
		}
	})
}
