package queue

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/metrics"
)

// timeHeap orders waiting entries by their next attempt.
type timeHeap []*entry

func (h timeHeap) Len() int           { return len(h) }
func (h timeHeap) Less(i, j int) bool { return h[i].data.NextAttempt.Before(h[j].data.NextAttempt) }
func (h timeHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].heapIndex, h[j].heapIndex = i, j
}
func (h *timeHeap) Push(x any) {
	e := x.(*entry)
	e.heapIndex = len(*h)
	*h = append(*h, e)
}
func (h *timeHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.heapIndex = -1
	return e
}
func (h *timeHeap) remove(e *entry) {
	if e.heapIndex >= 0 && e.heapIndex < len(*h) && (*h)[e.heapIndex] == e {
		heap.Remove(h, e.heapIndex)
	}
}

// pool is the ready list and workers of one transport.
type pool struct {
	name    string
	ready   []*entry
	cond    *sync.Cond // on Queue.mu
	workers int        // wanted (Policy)
	running int        // started and not retired
}

// scheduleLocked puts an entry where its next attempt time says: due now goes straight to its
// transport's ready list (no scheduler hop), later goes in the heap.
func (q *Queue) scheduleLocked(e *entry, at time.Time) {
	e.data.NextAttempt = at
	if !at.After(time.Now()) {
		q.readyLocked(e)
		return
	}
	e.state = stateWaiting
	heap.Push(&q.waiting, e)
	if q.waiting[0] == e {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}

func (q *Queue) readyLocked(e *entry) {
	e.state = stateReady
	p := q.poolLocked(e.data.Envelope.Transport)
	p.ready = append(p.ready, e)
	p.cond.Signal()
}

func (q *Queue) poolLocked(name string) *pool {
	p, ok := q.pools[name]
	if !ok {
		p = &pool{name: name, cond: sync.NewCond(&q.mu), workers: q.policy.Load().workers(name)}
		// Series with known labels start at 0, so rate() and alerts see the first event.
		for _, r := range metrics.DeferralReasons() {
			q.metrics.DeliveryDeferrals.WithLabelValues(name, r)
		}
		for _, r := range []string{"delivered", "deferred", "bounced"} {
			q.metrics.DeliveryAttempts.WithLabelValues(name, r)
		}
		q.pools[name] = p
		if q.run != nil {
			q.startWorkersLocked(p)
		}
	}
	return p
}

// startWorkersLocked starts workers until p has as many as it wants; surplus ones retire themselves.
func (q *Queue) startWorkersLocked(p *pool) {
	rs := q.run
	for ; p.running < p.workers; p.running++ {
		rs.wg.Add(1)
		go q.worker(p, rs)
	}
}

// Run delivers queued messages until ctx ends, then stops taking new attempts and waits for those in
// flight (cancelling them after Options.ShutdownGrace). Messages committed before Run wait for it.
func (q *Queue) Run(ctx context.Context) error {
	q.mu.Lock()
	if q.run != nil || q.closed {
		q.mu.Unlock()
		return errors.New("queue: Run called twice or after Close")
	}
	attemptCtx, cancelAttempts := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelAttempts()
	stopGrace := context.AfterFunc(ctx, func() { time.AfterFunc(q.opts.ShutdownGrace, cancelAttempts) })
	defer stopGrace()
	rs := &runState{ctx: attemptCtx}
	q.run = rs
	for _, p := range q.pools {
		q.startWorkersLocked(p)
	}
	q.mu.Unlock()

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	gauges := time.NewTicker(time.Second)
	defer gauges.Stop()
	for {
		q.mu.Lock()
		now := time.Now()
		for len(q.waiting) > 0 && !q.waiting[0].data.NextAttempt.After(now) {
			q.readyLocked(heap.Pop(&q.waiting).(*entry))
		}
		wait := time.Hour
		if len(q.waiting) > 0 {
			wait = q.waiting[0].data.NextAttempt.Sub(now)
		}
		q.mu.Unlock()
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			q.mu.Lock()
			rs.stopping = true
			for _, p := range q.pools {
				p.cond.Broadcast()
			}
			q.mu.Unlock()
			rs.wg.Wait()
			q.mu.Lock()
			q.run = nil
			q.mu.Unlock()
			return nil
		case <-q.wake:
		case <-timer.C:
		case <-gauges.C:
			q.mu.Lock()
			q.updateOldestLocked()
			q.mu.Unlock()
			q.compact()
		}
	}
}

func (q *Queue) worker(p *pool, rs *runState) {
	defer rs.wg.Done()
	for {
		q.mu.Lock()
		for len(p.ready) == 0 && !rs.stopping && p.running <= p.workers {
			p.cond.Wait()
		}
		if rs.stopping || p.running > p.workers {
			p.running--
			q.mu.Unlock()
			return
		}
		e := p.ready[0]
		p.ready[0] = nil
		p.ready = p.ready[1:]
		if e.state != stateReady {
			q.mu.Unlock()
			continue
		}
		e.state = stateInflight
		cur := e.data.clone()
		q.mu.Unlock()
		if !q.waitGate(rs) {
			q.mu.Lock()
			q.readyLocked(e) // stopping while held: untouched, in the spool for the next start
			q.mu.Unlock()
			continue
		}
		q.attempt(rs.ctx, e, cur)
	}
}

// waitGate returns true when the Gate lets deliveries through, false when the queue stops first. The
// worker holds its entry meanwhile; the other ready entries wait for the other workers, held alike.
func (q *Queue) waitGate(rs *runState) bool {
	if q.opts.Gate == nil {
		return true
	}
	for {
		err := q.opts.Gate.Unavailable()
		if err == nil {
			if q.held.CompareAndSwap(true, false) {
				q.log.Info("deliveries resume: the store is available again")
			}
			return true
		}
		q.mu.Lock()
		stopping := rs.stopping
		q.mu.Unlock()
		if stopping {
			return false
		}
		if q.held.CompareAndSwap(false, true) {
			q.log.Warn("deliveries held: the store is unavailable", "err", err)
		}
		time.Sleep(gatePoll)
	}
}

// deliver makes one Deliver call for the pending recipients and returns a Result aligned with them.
func (q *Queue) deliver(ctx context.Context, cur *Entry, rcpts []string) relay.Result {
	name := cur.Envelope.Transport
	t, ok := q.opts.Transports.Transport(name)
	if !ok {
		return relay.Failed(len(rcpts), relay.Errorf(451, relay.CodeTempLocal, "config",
			"transport %q is not configured", name))
	}
	id := cur.ID
	m := &relay.Message{
		QueueID:    cur.ID,
		Channel:    cur.Envelope.Channel,
		MailFrom:   cur.Envelope.MailFrom,
		Recipients: rcpts,
		MessageID:  cur.Envelope.MessageID,
		ForceTLS:   cur.Envelope.ForceTLS,
		Size:       cur.Size,
		Open:       func() (io.ReadCloser, error) { return q.spool.open(id) },
	}
	ctx, cancel := context.WithTimeout(ctx, q.policy.Load().AttemptTimeout)
	defer cancel()
	res := t.Deliver(ctx, m)
	if len(res.Errs) != len(rcpts) {
		// relay.Result.Errs must be aligned with the recipients; anything else is a transport bug,
		// and guessing would either lose mail or bounce it, so the attempt counts as temporary.
		q.log.Error("transport returned a result not aligned with the recipients", "queue_id", cur.ID,
			"transport", name, "results", len(res.Errs), "recipients", len(rcpts))
		return relay.Failed(len(rcpts), relay.Errorf(451, relay.CodeTempLocal, "transport",
			"transport %q returned %d results for %d recipients", name, len(res.Errs), len(rcpts)))
	}
	return res
}

// attempt delivers the pending recipients of one entry and applies the outcome: per-recipient status
// as relay.Classify decides it (delivered; bounced for the address, the message or Force TLS; deferred
// for everything else, setup faults included), bounces, alerts, the durable update (or removal),
// metrics, logs and the delivery log. Bounces the store could not take earlier are retried first.
func (q *Queue) attempt(runCtx context.Context, e *entry, cur Entry) {
	next := cur // cur is already a private copy
	now := time.Now()
	var recorded []int
	for i := range next.Recipients {
		if next.Recipients[i].Unrecorded && q.recordBounce(&next, i, now) {
			recorded = append(recorded, i)
		}
	}
	var idx []int
	var rcpts []string
	for i, r := range next.Recipients {
		if r.Status == Pending {
			idx = append(idx, i)
			rcpts = append(rcpts, r.Address)
		}
	}
	if len(idx) == 0 {
		// Only bounce records were left to write.
		if len(recorded) > 0 {
			q.log.Info("bounce records written after a store failure", "queue_id", next.ID, "recipients", len(recorded))
		}
		q.finish(e, &next, now)
		return
	}
	start := time.Now()
	res := q.deliver(runCtx, &next, rcpts)
	elapsed := time.Since(start)
	now = time.Now()

	next.Attempts++
	var delivered, deferred, bounced []int
	faults := map[relay.Fault]error{}
	counts := map[relay.Fault]int{}
	var deferErr error
	var retryAfter time.Duration
	for k, i := range idx {
		err := res.Errs[k]
		r := &next.Recipients[i]
		fault := relay.Classify(err)
		if err != nil {
			q.metrics.DeliveryFaults.WithLabelValues(next.Envelope.Transport, fault.String()).Inc()
			if _, ok := faults[fault]; !ok {
				faults[fault] = err
			}
			counts[fault]++
		}
		switch {
		case err == nil:
			r.Status, r.Diagnostic, r.Time = Delivered, res.Reply, now
			delivered = append(delivered, i)
			q.metrics.DeliveryLatency.WithLabelValues(next.Envelope.Transport).Observe(now.Sub(next.Created).Seconds())
		case fault.Bounces():
			re, _ := relay.AsError(err) // bouncing faults are always *relay.Error (relay.Classify)
			r.Status, r.Time = Bounced, now
			r.Code, r.Enhanced, r.Diagnostic, r.Fault, r.Reason = re.Code, re.Enhanced, re.Msg, fault.String(), re.Reason
			if r.Reason == "" {
				r.Reason = "upstream"
			}
			bounced = append(bounced, i)
		default:
			deferred = append(deferred, i)
			q.metrics.DeliveryDeferrals.WithLabelValues(next.Envelope.Transport, deferralReason(err, fault)).Inc()
			if deferErr == nil {
				deferErr = err
			}
			if re, ok := relay.AsError(err); ok && re.RetryAfter > retryAfter {
				retryAfter = re.RetryAfter
			}
		}
	}
	q.noteAlerts(&next, faults, counts, len(delivered) > 0, now)
	if len(delivered) > 0 {
		next.LastReply = res.Reply
	}
	policy := q.policy.Load()
	if deferErr != nil {
		next.LastError = deferErr.Error()
		if next.FirstError == "" {
			next.FirstError = next.LastError
		}
		expiry := next.Created.Add(policy.MaxLifetime)
		if !now.Before(expiry) {
			// RFC 3463 X.4.7: delivery time expired. The diagnostic keeps the last upstream answer. No
			// suppression: a message that waited out a network outage or mailgate's own wrong password
			// says nothing about the address.
			diag := fmt.Sprintf("delivery time expired after %d attempts; last error: %s",
				next.Attempts, clientText(deferErr))
			for _, i := range deferred {
				r := &next.Recipients[i]
				r.Status, r.Time = Bounced, now
				r.Code, r.Enhanced, r.Diagnostic = 554, relay.CodeExpired, diag
				r.Fault, r.Reason = relay.Classify(deferErr).String(), "expired"
				bounced = append(bounced, i)
			}
			deferred = nil
		}
	}
	for _, i := range bounced {
		q.recordBounce(&next, i, now)
	}
	if !next.done() {
		at := now.Add(max(policy.Retry.Delay(next.Attempts), retryAfter))
		if expiry := next.Created.Add(policy.MaxLifetime); len(deferred) > 0 && at.After(expiry) {
			at = expiry // one last attempt when the lifetime ends, then the bounce
		}
		next.NextAttempt = at
	}
	q.report(&next, res, elapsed, delivered, deferred, bounced, deferErr)
	q.finish(e, &next, now)
}

// deferralReason files a deferral under one of metrics.DeferralReasons, for dashboards: what kept the
// mail back, in words an operator acts on.
func deferralReason(err error, fault relay.Fault) string {
	re, _ := relay.AsError(err)
	if re == nil {
		return "connect"
	}
	reason := re.Reason
	switch {
	case fault == relay.FaultSetup && strings.Contains(reason, "auth"):
		return "auth"
	case fault == relay.FaultSetup:
		return "setup"
	case strings.Contains(reason, "throttl"):
		return "throttle"
	case strings.Contains(reason, "quota"):
		return "quota"
	case reason == "rate_limited" || reason == "rate_limit":
		return "rate_limited"
	case re.Stage == relay.StageTLS:
		return "tls"
	case re.Stage == relay.StageConnect || strings.Contains(reason, "network") || reason == "timeout":
		return "connect"
	}
	return "temporary"
}

// finish persists an attempt's outcome (removal once nothing is left to do) and puts the entry back in
// the schedule or takes it out.
func (q *Queue) finish(e *entry, next *Entry, now time.Time) {
	q.mu.Lock()
	dropped := e.dropped
	if e.hold {
		next.Held = true // held while this attempt ran: persisted with its outcome
	}
	q.mu.Unlock()
	final := next.done()
	var perr error
	switch {
	case dropped:
	case final:
		perr = q.spool.remove(next.ID)
	default:
		perr = q.spool.replaceMeta(next)
	}
	if perr != nil {
		// The in-memory state stays right; after a crash the attempt would be repeated.
		q.log.Error("spool update failed", "queue_id", next.ID, "err", perr)
	}

	q.mu.Lock()
	switch {
	case dropped || final:
		e.state = stateGone
		delete(q.entries, next.ID)
		q.metrics.QueueDepth.Set(float64(len(q.entries)))
	case next.Held:
		e.data, e.hold, e.retryNow = *next, false, false
		e.state = stateHeld
	default:
		e.data = *next
		at := next.NextAttempt
		if e.retryNow {
			e.retryNow, at = false, now
		}
		q.scheduleLocked(e, at)
	}
	q.mu.Unlock()
	if dropped {
		if err := q.finishDrop(next); err != nil {
			q.log.Error("drop failed", "queue_id", next.ID, "err", err)
		}
	}
}

// clientText is an error's client-safe text: the relay.Error message, or a generic phrase for errors
// that are not relay errors (their text may carry internal detail; it stays in the logs).
func clientText(err error) string {
	if re, ok := relay.AsError(err); ok {
		return fmt.Sprintf("%d %s %s", re.Code, re.Enhanced, re.Msg)
	}
	return "temporary failure (network or timeout)"
}

// recordBounce hands recipient i's bounce to the bounce store, which suppresses the address only for
// FaultAddress. A store failure leaves the bounce marked Unrecorded, to be retried with the next
// attempt; it reports whether the record was written.
func (q *Queue) recordBounce(e *Entry, i int, now time.Time) bool {
	r := &e.Recipients[i]
	if !r.Unrecorded {
		q.metrics.Bounces.WithLabelValues(r.Reason).Inc()
	}
	r.Unrecorded = false
	if q.opts.Bounces == nil {
		return true
	}
	fault := relay.FaultFromString(r.Fault)
	b := relay.Bounce{
		Address:    r.Address,
		Channel:    e.Envelope.Channel,
		Time:       r.Time.UTC(),
		Code:       r.Code,
		Enhanced:   r.Enhanced,
		Diagnostic: r.Diagnostic,
		MessageID:  e.Envelope.MessageID,
		Ticket:     e.Envelope.Ticket,
		QueueID:    e.ID,
		Reason:     r.Reason,
		Fault:      fault,
		Suppressed: fault.Suppresses(),
	}
	if b.Time.IsZero() {
		b.Time = now.UTC()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.opts.Bounces.RecordBounce(ctx, b); err != nil {
		r.Unrecorded = true
		q.log.Error("bounce record failed; retried with the next attempt", "queue_id", e.ID, "channel", e.Envelope.Channel,
			"suppress", b.Suppressed, "err", err)
		return false
	}
	return true
}

// report emits the metrics, log lines and delivery-log record of one attempt.
func (q *Queue) report(e *Entry, res relay.Result, elapsed time.Duration, delivered, deferred, bounced []int, deferErr error) {
	transport := e.Envelope.Transport
	m := q.metrics
	m.DeliveryAttempts.WithLabelValues(transport, "delivered").Add(float64(len(delivered)))
	m.DeliveryAttempts.WithLabelValues(transport, "deferred").Add(float64(len(deferred)))
	m.DeliveryAttempts.WithLabelValues(transport, "bounced").Add(float64(len(bounced)))
	result := "delivered"
	switch {
	case len(deferred) > 0:
		result = "deferred"
	case len(bounced) > 0:
		result = "bounced"
	}
	m.DeliveryDuration.WithLabelValues(transport, result).Observe(elapsed.Seconds())

	base := []any{"queue_id", e.ID, "channel", e.Envelope.Channel, "transport", transport, "attempt", e.Attempts}
	if len(delivered) > 0 {
		q.log.Info("delivered", append(base, "recipients", len(delivered), "reply", res.Reply, "duration", elapsed.Seconds())...)
	}
	if len(deferred) > 0 {
		attrs := append(base, "recipients", len(deferred), "reply", clientText(deferErr),
			"next_attempt", e.NextAttempt.UTC().Format(time.RFC3339))
		if re, ok := relay.AsError(deferErr); !ok || re.Err != nil {
			attrs = append(attrs, "err", deferErr) // the cause, when there is more to it than the reply
		}
		q.log.Warn("deferred", attrs...)
	}
	// One bounced line per distinct answer, so a mixed attempt does not hide a reason.
	type answer struct {
		code     int
		enhanced relay.EnhancedCode
		diag     string
	}
	counts := map[answer]int{}
	var order []answer
	for _, i := range bounced {
		r := e.Recipients[i]
		a := answer{r.Code, r.Enhanced, r.Diagnostic}
		if counts[a] == 0 {
			order = append(order, a)
		}
		counts[a]++
	}
	for _, a := range order {
		q.log.Warn("bounced", append(base, "recipients", counts[a],
			"reply", fmt.Sprintf("%d %s %s", a.code, a.enhanced, a.diag))...)
	}

	// The delivery log is for operators: a deferral keeps its full cause (network errors included).
	status, reply := "deferred", ""
	if deferErr != nil {
		reply = deferErr.Error()
	}
	if len(deferred) == 0 {
		var nd, nb int
		for _, r := range e.Recipients {
			switch r.Status {
			case Delivered:
				nd++
			case Bounced:
				nb++
			}
		}
		switch {
		case nb == 0:
			status, reply = "delivered", e.LastReply
		case nd == 0:
			status = "bounced"
		default:
			status = "partial"
		}
		if nb > 0 && len(order) > 0 {
			reply = fmt.Sprintf("%d %s %s", order[0].code, order[0].enhanced, order[0].diag)
		} else if nb > 0 {
			reply = e.LastReply
		}
	}
	q.logDelivery(e, status, reply)
}
