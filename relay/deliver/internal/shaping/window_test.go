package shaping

import (
	"context"
	"testing"
	"time"
)

func TestWindowAdmitsUpToLimitAndFreesAfterSpan(t *testing.T) {
	w := NewWindow(30, time.Minute)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 30 {
		g, _, ra := w.Reserve(1, t0.Add(time.Duration(i)*100*time.Millisecond))
		if g != 1 || ra != 0 {
			t.Fatalf("message %d: granted %d retryAfter %v", i, g, ra)
		}
	}
	g, _, ra := w.Reserve(1, t0.Add(5*time.Second))
	if g != 0 || ra <= 50*time.Second || ra > 61*time.Second {
		t.Fatalf("31st message: granted %d retryAfter %v, want 0 and ~55s", g, ra)
	}
	if g, _, _ := w.Reserve(1, t0.Add(59*time.Second)); g != 0 {
		t.Fatal("admitted before the minute was over")
	}
	if g, _, _ := w.Reserve(1, t0.Add(64*time.Second)); g != 1 {
		t.Fatal("not admitted once the first events left the window")
	}
}

func TestWindowPartialGrantAndRelease(t *testing.T) {
	w := NewWindow(10, 24*time.Hour)
	now := time.Unix(1_700_000_000, 0)
	g, stamp, ra := w.Reserve(7, now)
	if g != 7 || ra != 0 {
		t.Fatalf("granted %d %v", g, ra)
	}
	g, _, ra = w.Reserve(5, now.Add(time.Hour))
	if g != 3 || ra < 22*time.Hour || ra > 24*time.Hour+time.Minute {
		t.Fatalf("granted %d retryAfter %v, want 3 and ~23h", g, ra)
	}
	w.Release(4, stamp)
	if u := w.Used(now.Add(time.Hour)); u != 6 {
		t.Fatalf("used after release = %d, want 6", u)
	}
	if e := w.OldestExpiry(now.Add(time.Hour)); e < 22*time.Hour || e > 24*time.Hour {
		t.Fatalf("oldestExpiry = %v", e)
	}
	if u := w.Used(now.Add(25 * time.Hour)); u != 0 {
		t.Fatalf("used a day later = %d", u)
	}
	var none *Window
	if g, _, _ := none.Reserve(1e6, now); g != 1e6 {
		t.Fatal("nil window must not limit")
	}
}

func TestSlotsFIFOAndResize(t *testing.T) {
	var s Slots
	s.SetLimit(2)
	ctx := context.Background()
	for range 2 {
		if err := s.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := s.Acquire(short); err == nil {
		t.Fatal("third slot granted over a limit of 2")
	}
	got := make(chan int, 2)
	for i := range 2 {
		go func() {
			if s.Acquire(ctx) == nil {
				got <- i
			}
		}()
		deadline := time.Now().Add(5 * time.Second)
		for {
			s.mu.Lock()
			n := len(s.waiters)
			s.mu.Unlock()
			if n == i+1 || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	s.Release()
	if first := <-got; first != 0 {
		t.Fatalf("slot went to waiter %d, want the oldest (0)", first)
	}
	s.SetLimit(3) // a reload grants one more: the second waiter gets it without a release
	select {
	case <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("raising the limit did not serve the waiter")
	}
	s.SetLimit(1) // reduction: three in use, releases only shrink the count
	s.Release()
	s.Release()
	short2, cancel2 := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel2()
	if err := s.Acquire(short2); err == nil {
		t.Fatal("slot granted while still at the reduced limit")
	}
}
