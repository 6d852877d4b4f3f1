package smtp_test

import (
	"net"
	"strings"
	"sync"
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

// BenchmarkDeliverOverLatency sends 10 KiB messages one after another over one pooled connection to
// go-smtp's server (which offers CHUNKING) behind a proxy that delays each direction by 5 ms, as a
// nearby cloud upstream would: DATA takes two round trips per message (the body waits for 354), BDAT
// one. Reported: ms per message.
//
//	go test ./relay/deliver/smtp -run '^$' -bench DeliverOverLatency -benchtime 50x
func BenchmarkDeliverOverLatency(b *testing.B) {
	const oneWay = 5 * time.Millisecond
	for _, bc := range []struct {
		name    string
		disable bool
	}{{"DATA", true}, {"BDAT", false}} {
		b.Run(bc.name, func(b *testing.B) {
			p := startGoSMTPPeer(b)
			proxy := delayProxy(b, p.addr, oneWay)
			host, port := hostPort(b, proxy)
			h := newTransport(b, smtp.Options{Host: host, Port: port, MaxConnections: 1, DisableChunking: bc.disable})
			ctx := ctxTimeout(b, 10*time.Minute)
			mustDeliver(b, h.tr, chunkable(bodyMessage(tenKiB, "rcpt@example.net"))) // connection set up
			b.ResetTimer()
			start := time.Now()
			for b.Loop() {
				if res := h.tr.Deliver(ctx, chunkable(bodyMessage(tenKiB, "rcpt@example.net"))); res.Errs[0] != nil {
					b.Fatal(res.Errs[0])
				}
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "ms/msg")
		})
	}
}

// delayProxy forwards loopback TCP connections to target, holding every chunk of bytes for delay in
// each direction (in order, without holding up the chunks behind it), and returns its address.
func delayProxy(tb testing.TB, target string, delay time.Duration) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	tb.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	pipe := func(dst, src net.Conn) {
		type chunk struct {
			at time.Time
			b  []byte
		}
		q := make(chan chunk, 1024)
		go func() {
			defer dst.Close()
			for c := range q {
				time.Sleep(time.Until(c.at))
				if _, err := dst.Write(c.b); err != nil {
					return
				}
			}
		}()
		defer close(q)
		for {
			buf := make([]byte, 64<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{time.Now().Add(delay), buf[:n]}
			}
			if err != nil {
				return
			}
		}
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, up)
			mu.Unlock()
			go pipe(up, c)
			go pipe(c, up)
		}
	}()
	return ln.Addr().String()
}
