package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/metrics"
)

// Transports finds the transport that delivers a message by its name (relay.Envelope.Transport). The
// queue asks at every attempt, so an implementation that swaps its map on a configuration reload
// changes where the next attempt goes.
type Transports interface {
	Transport(name string) (relay.Transport, bool)
}

// TransportMap is a fixed set of transports, for wiring without reloads and for tests.
type TransportMap map[string]relay.Transport

// Transport returns the transport registered under name.
func (m TransportMap) Transport(name string) (relay.Transport, bool) {
	t, ok := m[name]
	return t, ok
}

// Bounces records recipients that will not receive a message (relay/store puts them on the
// suppression list).
type Bounces interface {
	RecordBounce(ctx context.Context, b relay.Bounce) error
}

// DeliveryLog records the latest state of each queued message (relay/store upserts by queue id).
type DeliveryLog interface {
	LogDelivery(ctx context.Context, r relay.DeliveryRecord) error
}

// Gate holds deliveries back while Unavailable reports an error. With a shared store that cannot be
// reached, an attempt's outcome could not be recorded (a bounce, the delivery log) nor a shared
// upstream budget taken, so the mail waits in the spool — no attempt spent, no lifetime used up by
// backoff — and goes out as soon as the store is back. relay/store implements it.
type Gate interface {
	Unavailable() error
}

// gatePoll is how often a held worker asks the Gate again.
const gatePoll = 200 * time.Millisecond

// Options configure a Queue. Dir and Transports are required.
type Options struct {
	Dir        string // spool directory; created if missing
	Transports Transports
	// Bounces and DeliveryLog may be nil: bounces are then only logged and counted.
	Bounces     Bounces
	DeliveryLog DeliveryLog
	Gate        Gate             // nil: never held
	Metrics     *metrics.Metrics // nil: a private registry
	Logger      *slog.Logger     // nil: slog.Default()

	// Workers is the number of concurrent attempts per transport (default 16); TransportWorkers
	// overrides it for named transports. Per-server connection limits belong to the transport; cmd
	// sets a custom SMTP server's workers to its max_connections, so no worker parks on a connection
	// slot with the wait counted as delivery time. SetPolicy changes both while the queue runs.
	Workers          int
	TransportWorkers map[string]int

	Retry Backoff
	// MaxLifetime is how long a message may stay queued before its remaining recipients bounce with
	// 5.4.7 (default 5 days, RFC 5321 §4.5.4.1).
	MaxLifetime time.Duration
	// AttemptTimeout bounds one Deliver call (default 10 minutes, the sum of the RFC 5321 §4.5.3.2
	// timeouts a large DATA may legitimately take).
	AttemptTimeout time.Duration
	// ShutdownGrace is how long attempts in flight may run on after Run's context ends before they are
	// cancelled (default 10 s): cutting a delivery short makes a duplicate more likely.
	ShutdownGrace time.Duration

	// SegmentBytes is the size of each spool segment file (default 64 MiB; see the package doc).
	SegmentBytes int64
	// LargeMessageBytes: a body larger than this is written to a file of its own rather than into a
	// segment, so its fsync does not hold up the small commits sharing a segment's (default 1 MiB; at
	// most a quarter of SegmentBytes).
	LargeMessageBytes int64
}

// Policy is the part of Options a configuration reload may change while the queue runs. A new policy
// applies from the next scheduling decision: an attempt in flight keeps its timeout, and a message
// already waiting keeps the next-attempt time it was given.
type Policy struct {
	Retry          Backoff
	MaxLifetime    time.Duration
	AttemptTimeout time.Duration
	// Workers and TransportWorkers are as in Options; a change starts or retires workers at once (a
	// retired worker finishes its attempt first).
	Workers          int
	TransportWorkers map[string]int
}

func (p Policy) withDefaults() Policy {
	p.Retry = p.Retry.withDefaults()
	if p.MaxLifetime <= 0 {
		p.MaxLifetime = 5 * 24 * time.Hour
	}
	if p.AttemptTimeout <= 0 {
		p.AttemptTimeout = 10 * time.Minute
	}
	if p.Workers <= 0 {
		p.Workers = 16
	}
	return p
}

// workers is how many concurrent attempts the transport name gets.
func (p *Policy) workers(name string) int {
	if w, ok := p.TransportWorkers[name]; ok && w > 0 {
		return w
	}
	return p.Workers
}

// SetPolicy replaces the retry schedule, the maximum lifetime, the attempt timeout and the worker
// counts (on SIGHUP).
func (q *Queue) SetPolicy(p Policy) {
	p = p.withDefaults()
	q.policy.Store(&p)
	q.mu.Lock()
	defer q.mu.Unlock()
	for name, pool := range q.pools {
		pool.workers = p.workers(name)
		if q.run != nil {
			q.startWorkersLocked(pool)
		}
		pool.cond.Broadcast() // surplus workers retire
	}
}

// ErrNoEntry is wrapped by the operator API when no queued message has the given id.
var ErrNoEntry = errors.New("no such queue entry")

// entry states in the scheduler.
const (
	stateWaiting  = iota // in the heap until its next attempt
	stateReady           // in its transport pool's ready list
	stateInflight        // a worker is delivering it
	stateGone            // removed (delivered, bounced or dropped)
	stateHeld            // held by an operator: not attempted until released
)

type entry struct {
	data      Entry // replaced (never mutated in place) under Queue.mu
	state     int
	heapIndex int
	dropped   bool // Drop was called while in flight
	retryNow  bool // RetryNow was called while in flight
	hold      bool // Hold was called while in flight
}

// Queue is the durable spool and its scheduler. Create it with New, start delivery with Run; Create,
// List, RetryNow and Drop may be called from any goroutine, before or during Run.
type Queue struct {
	opts    Options
	policy  atomic.Pointer[Policy] // Retry, MaxLifetime and AttemptTimeout in force (opts' are the first)
	log     *slog.Logger
	metrics *metrics.Metrics
	spool   *spool
	lock    *os.File
	ids     idSource

	mu      sync.Mutex
	entries map[string]*entry
	waiting timeHeap
	pools   map[string]*pool
	wake    chan struct{}
	run     *runState // non-nil while Run is running
	closed  bool

	alerts alerts
	held   atomic.Bool // the Gate is closed: logged once by the first worker to see it
}

type runState struct {
	ctx      context.Context // cancelled ShutdownGrace after Run's context: attempts use it
	stopping bool
	wg       sync.WaitGroup
}

// New opens (or creates) the spool in opts.Dir, locks it against a second process, cleans what a crash
// left half-written, quarantines unreadable entries and loads the rest. Delivery starts with Run.
func New(opts Options) (*Queue, error) {
	if opts.Dir == "" {
		return nil, errors.New("queue: Options.Dir is required")
	}
	if opts.Transports == nil {
		return nil, errors.New("queue: Options.Transports is required")
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New(prometheus.NewRegistry())
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	policy := Policy{Retry: opts.Retry, MaxLifetime: opts.MaxLifetime, AttemptTimeout: opts.AttemptTimeout,
		Workers: opts.Workers, TransportWorkers: opts.TransportWorkers}.withDefaults()
	opts.Retry, opts.MaxLifetime, opts.AttemptTimeout = policy.Retry, policy.MaxLifetime, policy.AttemptTimeout
	opts.Workers = policy.Workers
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 10 * time.Second
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = 64 << 20
	}
	if opts.LargeMessageBytes <= 0 {
		opts.LargeMessageBytes = 1 << 20
	}
	opts.LargeMessageBytes = min(opts.LargeMessageBytes, opts.SegmentBytes/4)
	log := opts.Logger.With("component", "queue")
	sp, err := newSpool(opts.Dir, opts.SegmentBytes, opts.LargeMessageBytes, log)
	if err != nil {
		return nil, fmt.Errorf("queue: spool %s: %w", opts.Dir, err)
	}
	lock, err := os.OpenFile(filepath.Join(opts.Dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("queue: spool %s is in use by another process: %w", opts.Dir, err)
	}
	q := &Queue{
		opts:    opts,
		log:     log,
		metrics: opts.Metrics,
		spool:   sp,
		lock:    lock,
		entries: map[string]*entry{},
		pools:   map[string]*pool{},
		wake:    make(chan struct{}, 1),
	}
	q.policy.Store(&policy)
	if err := q.load(); err != nil {
		lock.Close()
		return nil, err
	}
	return q, nil
}

// load implements the start-up rules of the package doc.
func (q *Queue) load() error {
	found, err := q.spool.recover(q.quarantine)
	if err != nil {
		return fmt.Errorf("queue: %w", err)
	}
	for id, e := range found {
		if e.done() {
			// Every recipient was final (and every bounce recorded) but the removal was not recorded.
			if err := q.spool.remove(id); err != nil {
				q.log.Warn("spool cleanup failed", "queue_id", id, "err", err)
			}
			continue
		}
		q.entries[id] = &entry{data: e, heapIndex: -1}
	}
	for _, e := range q.entries {
		if e.data.Held {
			e.state = stateHeld
			continue
		}
		q.scheduleLocked(e, e.data.NextAttempt)
	}
	q.metrics.QueueDepth.Set(float64(len(q.entries)))
	q.updateOldestLocked()
	if n := len(q.entries); n > 0 {
		q.log.Info("spool resumed", "messages", n)
	}
	return nil
}

// quarantine keeps a record that cannot be used (metadata of an unknown version, a commit whose body is
// gone) in quarantine/ for an operator; it is never fatal and never delivered.
func (q *Queue) quarantine(name string, data []byte, cause error) {
	q.metrics.QueueQuarantined.Inc()
	if err := q.spool.writeQuarantine(name, data); err != nil {
		q.log.Error("spool entry unreadable and could not be quarantined", "file", name, "cause", cause, "err", err)
		return
	}
	q.log.Error("spool entry quarantined", "file", name, "dir", q.spool.quarantineDir, "err", cause)
}

// Close releases the spool lock. Call it after Run has returned.
func (q *Queue) Close() error {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	err := q.spool.close()
	if cerr := q.lock.Close(); err == nil {
		err = cerr
	}
	return err
}

// Create starts a new message body in the spool. The submission server streams the composed message
// into the Draft, then calls Commit (or Abort).
func (q *Queue) Create() (relay.Draft, error) {
	q.mu.Lock()
	closed := q.closed
	q.mu.Unlock()
	if closed {
		return nil, relay.Errorf(451, relay.CodeTempLocal, "queue", "queue is shutting down")
	}
	return q.spool.newDraft(q, q.ids.next()), nil
}

// Commit makes the message durable in the order the package doc gives, then schedules its first
// attempt at once. Only an id returned here may be announced to the client.
func (d *draft) Commit(ctx context.Context, env relay.Envelope) (string, error) {
	if d.done {
		return "", relay.Errorf(451, relay.CodeTempLocal, "queue", "message already committed or aborted")
	}
	if len(env.Recipients) == 0 {
		d.Abort()
		// RFC 5321 §3.3: a transaction without valid recipients is refused with 554 5.5.1.
		return "", relay.Errorf(554, "5.5.1", "no_recipients", "no valid recipients")
	}
	if env.Transport == "" {
		d.Abort()
		return "", relay.Errorf(451, relay.CodeTempLocal, "config", "no transport for this message")
	}
	if err := ctx.Err(); err != nil {
		d.Abort()
		return "", relay.Wrap(err, 451, relay.CodeTempLocal, "queue", "message not queued")
	}
	id, err := d.commit(env)
	if err != nil {
		d.q.log.Error("queue commit failed", "queue_id", d.id, "channel", env.Channel, "err", err)
		return "", relay.Wrap(err, 451, relay.CodeTempLocal, "queue", "cannot queue the message now")
	}
	return id, nil
}

func (d *draft) commit(env relay.Envelope) (string, error) {
	q := d.q
	d.done = true
	if d.err != nil {
		d.abortFiles()
		return "", d.err
	}
	now := time.Now()
	env.Recipients = slices.Clone(env.Recipients)
	if env.Received.IsZero() {
		env.Received = now
	}
	e := Entry{ID: d.id, Envelope: env, Size: d.size, Created: now, NextAttempt: now}
	for _, r := range env.Recipients {
		e.Recipients = append(e.Recipients, Recipient{Address: r, Status: Pending})
	}
	if err := q.spool.write(d, &e); err != nil {
		d.abortFiles()
		return "", err
	}
	// Debug: the submission's "accepted" line (or the test-send command's) already names the queue id,
	// channel and transport; a second info line per message was a third of the relay's log writes.
	q.log.Debug("queued", "queue_id", e.ID, "channel", env.Channel, "transport", env.Transport,
		"recipients", len(env.Recipients), "size", e.Size)
	q.logQueued(&e)
	q.mu.Lock()
	q.entries[e.ID] = &entry{data: e, heapIndex: -1}
	q.scheduleLocked(q.entries[e.ID], now)
	q.metrics.QueueDepth.Set(float64(len(q.entries)))
	q.mu.Unlock()
	return e.ID, nil
}

// List returns every queued message, oldest first.
func (q *Queue) List() []Entry {
	q.mu.Lock()
	out := make([]Entry, 0, len(q.entries))
	for _, e := range q.entries {
		out = append(out, e.data.clone())
	}
	q.mu.Unlock()
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Get returns one queued message.
func (q *Queue) Get(id string) (Entry, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, ok := q.entries[id]
	if !ok {
		return Entry{}, false
	}
	return e.data.clone(), true
}

func notFound(id string) error {
	return relay.Wrap(ErrNoEntry, 550, "5.0.0", "not_found", fmt.Sprintf("no queued message %q", id))
}

// RetryNow schedules an immediate attempt of a deferred message (mailgate queue retry). A message
// being delivered right now gets another attempt as soon as this one ends if recipients remain.
func (q *Queue) RetryNow(id string) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	e, ok := q.entries[id]
	if !ok {
		return notFound(id)
	}
	switch e.state {
	case stateWaiting:
		q.waiting.remove(e)
		q.scheduleLocked(e, time.Now())
	case stateInflight:
		e.retryNow = true
	case stateHeld:
		return relay.Wrap(ErrHeld, 550, "5.0.0", "held", fmt.Sprintf("queued message %q is held: release it first", id))
	}
	q.log.Info("retry requested", "queue_id", id, "channel", e.data.Envelope.Channel)
	return nil
}

// Drop removes a message from the spool without bouncing it (mailgate queue drop): the operator decided
// it must not be sent, which says nothing about the recipients' addresses, so nothing is put on the
// suppression list. The drop is logged and written to the delivery log as "dropped". A message being
// delivered right now is removed when the attempt ends (recipients that attempt reached got it).
func (q *Queue) Drop(id string) error {
	q.mu.Lock()
	e, ok := q.entries[id]
	if !ok {
		q.mu.Unlock()
		return notFound(id)
	}
	if e.state == stateInflight {
		e.dropped = true
		q.mu.Unlock()
		q.log.Info("drop requested during delivery", "queue_id", id)
		return nil
	}
	if e.state == stateWaiting {
		q.waiting.remove(e)
	}
	e.state = stateGone // a ready entry is skipped by the worker that pops it; a held one just goes
	delete(q.entries, id)
	q.metrics.QueueDepth.Set(float64(len(q.entries)))
	data := e.data
	q.mu.Unlock()
	return q.finishDrop(&data)
}

func (q *Queue) finishDrop(e *Entry) error {
	err := q.spool.remove(e.ID)
	q.log.Warn("dropped", "queue_id", e.ID, "channel", e.Envelope.Channel,
		"recipients", len(e.Pending()), "attempts", e.Attempts)
	q.logDelivery(e, "dropped", "dropped by operator")
	if err != nil {
		return relay.Wrap(err, 451, relay.CodeTempLocal, "queue", "could not remove the spool files")
	}
	return nil
}

// laterLog is a DeliveryLog that can also take a row without the caller waiting for it
// (relay/store's group-committing writer); onError hears of a row that could not be written.
type laterLog interface {
	LogDeliveryLater(r relay.DeliveryRecord, onError func(relay.DeliveryRecord, error))
}

// logQueued records a new entry in the delivery log; the client is waiting for its 250.
func (q *Queue) logQueued(e *Entry) { q.logDelivery(e, "queued", "") }

// deliveryRecord is e's delivery-log row with the given status and last reply.
func (q *Queue) deliveryRecord(e *Entry, status, reply string) relay.DeliveryRecord {
	return relay.DeliveryRecord{
		QueueID:    e.ID,
		MessageID:  e.Envelope.MessageID,
		Ticket:     e.Envelope.Ticket,
		Channel:    e.Envelope.Channel,
		Principal:  e.Envelope.Principal,
		Agent:      e.Envelope.Agent,
		Recipients: slices.Clone(e.Envelope.Recipients),
		Status:     status,
		Attempts:   e.Attempts,
		LastReply:  reply,
		Time:       time.Now().UTC(),
		States:     recipientStates(e, status),
	}
}

// recipientStates are e's recipients as the delivery log's per-recipient rows: delivered and bounced
// ones with their answer, pending ones with the last deferral (or "dropped" when the operator dropped
// the message).
func recipientStates(e *Entry, status string) []relay.RecipientState {
	out := make([]relay.RecipientState, 0, len(e.Recipients))
	for _, r := range e.Recipients {
		st := relay.RecipientState{Address: r.Address, Status: string(r.Status), Code: r.Code, Enhanced: r.Enhanced,
			Reply: r.Diagnostic, Time: r.Time}
		if r.Status == Pending {
			st.Reply = e.LastError
			if status == "dropped" {
				st.Status, st.Reply = "dropped", "dropped by operator"
			}
		}
		out = append(out, st)
	}
	return out
}

// logDelivery records e's state in the delivery log. When the log can take the row without a wait it
// does (see the package doc); rows keep their order either way.
func (q *Queue) logDelivery(e *Entry, status, reply string) {
	if q.opts.DeliveryLog == nil {
		return
	}
	r := q.deliveryRecord(e, status, reply)
	if later, ok := q.opts.DeliveryLog.(laterLog); ok {
		later.LogDeliveryLater(r, q.logFailed)
		return
	}
	// The log must not hold up delivery or the spool: it gets its own short deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.opts.DeliveryLog.LogDelivery(ctx, r); err != nil {
		q.logFailed(r, err)
	}
}

func (q *Queue) logFailed(r relay.DeliveryRecord, err error) {
	q.log.Warn("delivery log write failed", "queue_id", r.QueueID, "status", r.Status, "err", err)
}

func (q *Queue) updateOldestLocked() {
	var oldest time.Time
	byTransport := map[string]int{}
	for _, e := range q.entries {
		if oldest.IsZero() || e.data.Created.Before(oldest) {
			oldest = e.data.Created
		}
		byTransport[e.data.Envelope.Transport]++
	}
	for name := range q.pools {
		// A pool exists for every transport that had mail since start: its gauge goes back to 0.
		q.metrics.QueueByTransport.WithLabelValues(name).Set(float64(byTransport[name]))
	}
	for name, n := range byTransport {
		q.metrics.QueueByTransport.WithLabelValues(name).Set(float64(n))
	}
	q.metrics.QueueHeld.Set(float64(q.heldLocked()))
	if oldest.IsZero() {
		q.metrics.QueueOldestAge.Set(0)
		return
	}
	q.metrics.QueueOldestAge.Set(time.Since(oldest).Seconds())
}

func (q *Queue) heldLocked() int {
	n := 0
	for _, e := range q.entries {
		if e.state == stateHeld {
			n++
		}
	}
	return n
}

// compact copies the live entries of the oldest segment forward when the spool holds far more than
// they need (spool.compactable), one entry at a time under the queue lock so that no attempt appends a
// status record of it meanwhile. An entry being delivered is left for the next round.
func (q *Queue) compact() {
	for _, id := range q.spool.compactable() {
		q.mu.Lock()
		e, ok := q.entries[id]
		var err error
		if ok && e.state != stateInflight && e.state != stateGone {
			err = q.spool.copyForward(&e.data)
		}
		q.mu.Unlock()
		if err != nil {
			q.log.Error("spool compaction failed", "queue_id", id, "err", err)
			return
		}
	}
}
