package shaping

import "sync"

// Registry keeps one value per identity (a transport's budget) for the life of the process, so that
// Transports rebuilt by a reload find the slots and windows of the ones they replace. It is safe for
// concurrent use.
type Registry[B any] struct {
	mu sync.Mutex
	m  map[string]*B
}

// Get returns the identity's value, made by fresh on first use.
func (r *Registry[B]) Get(key string, fresh func() *B) *B {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]*B{}
	}
	b, ok := r.m[key]
	if !ok {
		b = fresh()
		r.m[key] = b
	}
	return b
}
