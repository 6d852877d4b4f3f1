package queue

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// Alert is a fault an operator must fix: mailgate's or the relay's setup (the mail waits), or a Force
// TLS next hop that cannot give TLS (the mail bounced). The queue raises one per transport and fault
// from the attempts' outcomes; /readyz lists them with their remedy. A setup alert clears at the next
// delivery through its transport, a Force TLS alert at the next Force TLS delivery through it.
type Alert struct {
	Transport string
	Fault     relay.Fault
	Reason    string // the relay.Error's Reason, e.g. upstream_auth, tls_policy
	Msg       string // what the upstream or the transport said (client-safe text)
	Remedy    string // what to do, when the transport knows
	Since     time.Time
	Count     int // recipients affected since Since
}

// String renders the alert for /readyz and the log.
func (a Alert) String() string {
	s := fmt.Sprintf("transport %s: %s fault (%s) since %s, %d recipient(s) affected: %s", a.Transport, a.Fault, a.Reason,
		a.Since.UTC().Format(time.RFC3339), a.Count, a.Msg)
	if a.Remedy != "" {
		s += "; remedy: " + a.Remedy
	}
	return s
}

type alertKey struct {
	transport string
	fault     relay.Fault
}

// alerts is the set of raised alerts, safe for concurrent use.
type alerts struct {
	mu  sync.Mutex
	set map[alertKey]*Alert
}

// raise records (or refreshes) the alert for err's fault on transport; it reports whether it is new.
func (a *alerts) raise(transport string, fault relay.Fault, err error, n int, now time.Time) bool {
	re, _ := relay.AsError(err)
	msg, reason, remedy := "", "", ""
	if re != nil {
		msg, reason, remedy = fmt.Sprintf("%d %s %s", re.Code, re.Enhanced, re.Msg), re.Reason, re.Remedy
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.set == nil {
		a.set = map[alertKey]*Alert{}
	}
	k := alertKey{transport, fault}
	cur, ok := a.set[k]
	if !ok {
		cur = &Alert{Transport: transport, Fault: fault, Since: now}
		a.set[k] = cur
	}
	cur.Reason, cur.Msg, cur.Remedy = reason, msg, remedy
	cur.Count += n
	return !ok
}

// clear drops the alert of fault on transport, reporting whether there was one.
func (a *alerts) clear(transport string, fault relay.Fault) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := alertKey{transport, fault}
	_, ok := a.set[k]
	delete(a.set, k)
	return ok
}

func (a *alerts) list() []Alert {
	a.mu.Lock()
	out := make([]Alert, 0, len(a.set))
	for _, x := range a.set {
		out = append(out, *x)
	}
	a.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Transport != out[j].Transport {
			return out[i].Transport < out[j].Transport
		}
		return out[i].Fault < out[j].Fault
	})
	return out
}

// Alerts returns the raised alerts, for /readyz: while any is raised, mail is waiting (setup) or was
// bounced (Force TLS) for a reason only an operator can fix.
func (q *Queue) Alerts() []Alert { return q.alerts.list() }

// noteAlerts raises and clears alerts from one attempt's outcome and keeps the alert gauge in step.
func (q *Queue) noteAlerts(e *Entry, faults map[relay.Fault]error, counts map[relay.Fault]int, delivered bool, now time.Time) {
	transport := e.Envelope.Transport
	for f, err := range faults {
		if !f.Alerts() {
			continue
		}
		if q.alerts.raise(transport, f, err, counts[f], now) {
			q.metrics.DeliveryAlerts.WithLabelValues(transport, f.String()).Set(1)
			re, _ := relay.AsError(err)
			attrs := []any{"transport", transport, "fault", f.String(), "queue_id", e.ID, "err", err}
			if re != nil && re.Remedy != "" {
				attrs = append(attrs, "remedy", re.Remedy)
			}
			q.log.Error("delivery alert raised", attrs...)
		}
	}
	if !delivered {
		return
	}
	clears := []relay.Fault{relay.FaultSetup}
	if e.Envelope.ForceTLS {
		clears = append(clears, relay.FaultTLS)
	}
	for _, f := range clears {
		if _, again := faults[f]; again {
			continue
		}
		if q.alerts.clear(transport, f) {
			q.metrics.DeliveryAlerts.WithLabelValues(transport, f.String()).Set(0)
			q.log.Info("delivery alert cleared", "transport", transport, "fault", f.String(), "queue_id", e.ID)
		}
	}
}
