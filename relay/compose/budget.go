package compose

import (
	"container/list"
	"context"
	"sync"
)

// Budget bounds the memory that all compositions sharing it hold for the text and HTML bodies they
// rewrite (decoded, with signature, inside the template). It is a weighted semaphore: a composition
// reserves an upper bound of what a body part will hold before decoding it, shrinks the reservation
// to what the part really needed once decoded, and gives it back when the part is written. Waiters are
// served in arrival order (a large part is not starved by a stream of small ones) and leave the queue
// when their context ends.
//
// One Budget should serve the whole process, across configuration reloads.
type Budget struct {
	mu      sync.Mutex
	size    int64
	used    int64
	waiters list.List // of *budgetWaiter, in arrival order
}

type budgetWaiter struct {
	n     int64
	ready chan struct{} // closed when the reservation is granted
}

// DefaultBudget is the memory budget of a Composer built without one: 128 MiB.
const DefaultBudget = 128 << 20

// NewBudget returns a budget of size bytes; size <= 0 means DefaultBudget.
func NewBudget(size int64) *Budget {
	if size <= 0 {
		size = DefaultBudget
	}
	return &Budget{size: size}
}

// Size is the budget's total.
func (b *Budget) Size() int64 { return b.size }

// acquire reserves n bytes (at most the budget's size), waiting in line until they are free or ctx
// ends.
func (b *Budget) acquire(ctx context.Context, n int64) (*reservation, error) {
	n = min(n, b.size)
	b.mu.Lock()
	if b.waiters.Len() == 0 && b.used+n <= b.size {
		b.used += n
		b.mu.Unlock()
		return &reservation{b: b, n: n}, nil
	}
	w := &budgetWaiter{n: n, ready: make(chan struct{})}
	e := b.waiters.PushBack(w)
	b.mu.Unlock()

	select {
	case <-w.ready:
		return &reservation{b: b, n: n}, nil
	case <-ctx.Done():
		b.mu.Lock()
		select {
		case <-w.ready:
			// Granted while ctx ended: give it back.
			b.used -= n
		default:
			b.waiters.Remove(e)
		}
		b.grantLocked()
		b.mu.Unlock()
		return nil, ctx.Err()
	}
}

// grantLocked admits waiters from the front of the line while they fit. Called with mu held.
func (b *Budget) grantLocked() {
	for e := b.waiters.Front(); e != nil; e = b.waiters.Front() {
		w := e.Value.(*budgetWaiter)
		if b.used+w.n > b.size {
			return
		}
		b.used += w.n
		b.waiters.Remove(e)
		close(w.ready)
	}
}

func (b *Budget) give(n int64) {
	b.mu.Lock()
	b.used -= n
	b.grantLocked()
	b.mu.Unlock()
}

// reservation is bytes held from a Budget.
type reservation struct {
	b *Budget
	n int64
}

// shrink keeps only n bytes of the reservation (when the part turned out smaller than its bound).
func (r *reservation) shrink(n int64) {
	if n < r.n {
		r.b.give(r.n - n)
		r.n = n
	}
}

// release gives the whole reservation back.
func (r *reservation) release() {
	r.b.give(r.n)
	r.n = 0
}
