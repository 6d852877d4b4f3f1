package shaping

import (
	"context"
	"sync"
)

// Slots is a counting semaphore whose size a reload may change: concurrent connections or requests to
// one upstream identity. Waiters are served in arrival order; after a reduction, releases only shrink
// the count until it is under the new limit, so work in flight is never cut off. The zero value has no
// slots: call SetLimit first.
type Slots struct {
	mu          sync.Mutex
	limit, used int
	waiters     []chan struct{} // closed when a slot is handed over, oldest first
}

// SetLimit changes the number of slots, handing new ones to waiters at once.
func (s *Slots) SetLimit(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limit = n
	s.handOver()
}

// Limit is the number of slots in force.
func (s *Slots) Limit() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limit
}

// Acquire takes a slot, waiting in line until one is free or ctx ends (then ctx's error).
func (s *Slots) Acquire(ctx context.Context) error {
	s.mu.Lock()
	if s.used < s.limit && len(s.waiters) == 0 {
		s.used++
		s.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	s.waiters = append(s.waiters, ch)
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for i, w := range s.waiters {
			if w == ch {
				s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
				s.mu.Unlock()
				return ctx.Err()
			}
		}
		s.mu.Unlock()
		s.Release() // handed over just as ctx ended: give it back
		return ctx.Err()
	}
}

// Release gives a slot back, to the longest waiter when the limit allows.
func (s *Slots) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.used--
	s.handOver()
}

// handOver gives free slots to waiters; s.mu is held.
func (s *Slots) handOver() {
	for s.used < s.limit && len(s.waiters) > 0 {
		close(s.waiters[0])
		s.waiters = s.waiters[1:]
		s.used++
	}
}
