package compose

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// granted reports whether a reservation arrives on c within a short wait.
func granted(c <-chan *reservation) *reservation {
	select {
	case r := <-c:
		return r
	case <-time.After(50 * time.Millisecond):
		return nil
	}
}

func acquireAsync(b *Budget, ctx context.Context, n int64) <-chan *reservation {
	c := make(chan *reservation, 1)
	go func() {
		r, err := b.acquire(ctx, n)
		if err == nil {
			c <- r
		}
	}()
	return c
}

func TestBudget(t *testing.T) {
	b := NewBudget(100)
	ctx := context.Background()
	a, err := b.acquire(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	big := acquireAsync(b, ctx, 50) // waits: 60 + 50 > 100
	if granted(big) != nil {
		t.Fatal("over the budget granted")
	}
	time.Sleep(10 * time.Millisecond) // let big queue first
	small := acquireAsync(b, ctx, 10) // fits, but must not overtake the waiting large one
	if granted(small) != nil {
		t.Fatal("a small reservation overtook a waiting large one")
	}
	a.shrink(40) // 40 + 50 + 10 = 100: both fit now, in order
	r1, r2 := granted(big), granted(small)
	if r1 == nil || r2 == nil {
		t.Fatal("not granted after shrink")
	}
	// Cancelled waiters leave the line and do not block the next.
	cctx, cancel := context.WithCancel(ctx)
	if _, err := b.acquire(cctx, 0); err != nil {
		t.Fatal(err)
	}
	waiting := acquireAsync(b, cctx, 30)
	next := acquireAsync(b, ctx, 10)
	cancel()
	if granted(waiting) != nil {
		t.Fatal("cancelled waiter granted")
	}
	r2.release() // 40 + 50 used: 10 fits
	r3 := granted(next)
	if r3 == nil {
		t.Fatal("waiter behind a cancelled one not granted")
	}
	// More than the budget is clamped to the whole budget.
	a.release()
	r1.release()
	r3.release()
	whole, err := b.acquire(ctx, 1000)
	if err != nil || whole.n != 100 {
		t.Fatalf("clamped reservation %+v %v", whole, err)
	}
}

// A part that needs more memory than the whole budget is refused with 552; a composition that waits
// for memory ends with its context (451, temporary).
func TestBudgetCompose(t *testing.T) {
	ch := channel(TicketFormat{}, brandTemplate)(t)
	in := baseHeader + "Subject: long\r\nContent-Type: text/html\r\n\r\n" + strings.Repeat("<p>0123456789abcdef</p>\r\n", 1000)

	_, err := New(Options{Budget: NewBudget(64 << 10)}).Compose(context.Background(), strings.NewReader(in), &countingWriter{},
		Request{Channel: ch, Agent: withJane(t), Now: fixedNow})
	wantRelayError(t, err, 552, relay.CodeTooBig, "size", "needs more memory")

	b := NewBudget(1 << 20)
	held, _ := b.acquire(context.Background(), 1<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = New(Options{Budget: b}).Compose(ctx, strings.NewReader(in), &countingWriter{},
		Request{Channel: ch, Agent: withJane(t), Now: fixedNow, InputSize: int64(len(in))})
	re, ok := relay.AsError(err)
	if !ok || re.Code != 451 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting for memory past the deadline: %v", err)
	}
	held.release()
	if _, err := New(Options{Budget: b}).Compose(context.Background(), strings.NewReader(in), &countingWriter{},
		Request{Channel: ch, Agent: withJane(t), Now: fixedNow, InputSize: int64(len(in))}); err != nil {
		t.Fatal(err)
	}
	if b.used != 0 {
		t.Fatalf("%d bytes still reserved after composition", b.used)
	}
}
