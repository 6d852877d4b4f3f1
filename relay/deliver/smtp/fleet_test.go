package smtp_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/deliver/smtp"
	"github.com/mailgate/mailgate/relay/peertest"
	"github.com/mailgate/mailgate/relay/store"
)

// fleetInstance is one process of a fleet: its own PostgreSQL connections and its own budgets registry.
func fleetInstance(t *testing.T, dsn string) *smtp.Budgets {
	t.Helper()
	st, err := store.OpenPostgres(context.Background(), dsn, store.PostgresOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b := smtp.NewFleetBudgets(st, smtp.FleetOptions{LeaseTime: 3 * time.Second, LeasePoll: 20 * time.Millisecond, DemandPoll: 100 * time.Millisecond})
	t.Cleanup(func() { b.Close(); st.Close() })
	return b
}

// TestFleetSlotsAcrossInstances: two instances, each with 4 concurrent deliveries to one mailbox with
// 3 connection slots, never have more than 3 connections open at the upstream between them (counted
// by a proxy in front of smtp-sink), and deliver everything: a waiting instance gets slots from the
// other's fair share instead of waiting out its idle pool.
func TestFleetSlotsAcrossInstances(t *testing.T) {
	dsn := peertest.PostgresSchema(t)
	sink := peertest.SMTPSink(t, "-a")
	proxy := peertest.TCPProxy(t, sink.Addr)
	host, port := hostPort(t, proxy.Addr())
	var trs []*smtp.Transport
	for range 2 {
		h := newTransport(t, smtp.Options{Host: host, Port: port, MaxConnections: 3, Budgets: fleetInstance(t, dsn)})
		trs = append(trs, h.tr)
	}
	const each = 40
	var wg sync.WaitGroup
	for _, tr := range trs {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each / 4 {
					mustDeliver(t, tr, message("rcpt@example.net"))
				}
			}()
		}
	}
	wg.Wait()
	sink.WaitCount(t, 2*each, 10*time.Second)
	if m := proxy.MaxOpen(); m > 3 {
		t.Fatalf("the upstream saw %d connections at once; the mailbox's limit is 3 for the fleet", m)
	}
	t.Logf("%d messages over %d connections, at most %d at once", 2*each, proxy.Accepted(), proxy.MaxOpen())
}
