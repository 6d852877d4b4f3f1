package smtp_test

import (
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/deliver/smtp"
	"github.com/mailgate/mailgate/relay/peertest"
)

// TestUpstreamRestartLeavesNoDeadPooledConnections: the pool holds several sessions to smtp-sink; the
// sink restarts (every pooled session is now dead); the next deliveries, concurrent as the queue's
// workers are, all succeed at once, none deferred over a dead session.
func TestUpstreamRestartLeavesNoDeadPooledConnections(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	h := sinkTransport(t, sink, smtp.Options{MaxConnections: 4})
	deliverConcurrently := func(n int) {
		t.Helper()
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mustDeliver(t, h.tr, message("rcpt@example.net"))
			}()
		}
		wg.Wait()
	}
	deliverConcurrently(8) // fills the pool with up to 4 sessions
	sink.Stop()
	again := peertest.SMTPSinkAt(t, sink.Addr, "-a")
	time.Sleep(100 * time.Millisecond) // let the closed sessions' FINs arrive
	deliverConcurrently(8)
	again.WaitCount(t, 8, 10*time.Second)
}
