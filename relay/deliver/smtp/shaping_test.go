package smtp

import (
	"testing"
	"time"
)

func TestWindowAdmitsUpToLimitAndFreesAfterSpan(t *testing.T) {
	w := newWindow(30, time.Minute)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 30 {
		g, _, ra := w.reserve(1, t0.Add(time.Duration(i)*100*time.Millisecond))
		if g != 1 || ra != 0 {
			t.Fatalf("message %d: granted %d retryAfter %v", i, g, ra)
		}
	}
	g, _, ra := w.reserve(1, t0.Add(5*time.Second))
	if g != 0 || ra <= 50*time.Second || ra > 61*time.Second {
		t.Fatalf("31st message: granted %d retryAfter %v, want 0 and ~55s", g, ra)
	}
	if g, _, _ := w.reserve(1, t0.Add(59*time.Second)); g != 0 {
		t.Fatal("admitted before the minute was over")
	}
	if g, _, _ := w.reserve(1, t0.Add(64*time.Second)); g != 1 {
		t.Fatal("not admitted once the first events left the window")
	}
}

func TestWindowPartialGrantAndRelease(t *testing.T) {
	w := newWindow(10, 24*time.Hour)
	now := time.Unix(1_700_000_000, 0)
	g, stamp, ra := w.reserve(7, now)
	if g != 7 || ra != 0 {
		t.Fatalf("granted %d %v", g, ra)
	}
	g, _, ra = w.reserve(5, now.Add(time.Hour))
	if g != 3 || ra < 22*time.Hour || ra > 24*time.Hour+time.Minute {
		t.Fatalf("granted %d retryAfter %v, want 3 and ~23h", g, ra)
	}
	w.release(4, stamp)
	if u := w.used(now.Add(time.Hour)); u != 6 {
		t.Fatalf("used after release = %d, want 6", u)
	}
	if e := w.oldestExpiry(now.Add(time.Hour)); e < 22*time.Hour || e > 24*time.Hour {
		t.Fatalf("oldestExpiry = %v", e)
	}
	if u := w.used(now.Add(25 * time.Hour)); u != 0 {
		t.Fatalf("used a day later = %d", u)
	}
	var none *window
	if g, _, _ := none.reserve(1e6, now); g != 1e6 {
		t.Fatal("nil window must not limit")
	}
}
