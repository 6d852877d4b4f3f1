package submit

import (
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// BenchmarkSubmit10KiB measures submission end to end over loopback (AUTH once per connection, then
// MAIL/RCPT/DATA of a 10 KiB reply per iteration): temp file, guard, header parse, pass-through compose
// into a draft file, commit. 10 connections per CPU, as agent applications' pools would use.
func BenchmarkSubmit10KiB(b *testing.B) {
	h := startServer(b, nil, nil)
	h.spool.noBodies = true
	body := "From: support@example.com\r\nTo: customer@example.net\r\nIn-Reply-To: <t@example.net>\r\nSubject: bench\r\n\r\n" +
		strings.Repeat(strings.Repeat("x", 78)+"\r\n", 128)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.SetParallelism(10) // 20 sessions on 2 CPUs, like the load test
	b.RunParallel(func(pb *testing.PB) {
		c, err := smtp.Dial(addrOf(b, h, "dev"))
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		if err := c.Auth(sasl.NewPlainClient("", "demo", "demo")); err != nil {
			b.Error(err)
			return
		}
		for pb.Next() {
			if err := c.SendMail("x@example.org", []string{"customer@example.net"}, strings.NewReader(body)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	if n := len(h.spool.Messages()); n < b.N {
		b.Fatalf("%d messages queued, want %d", n, b.N)
	}
}
