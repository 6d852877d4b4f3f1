package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// tmpfsDir mounts a tmpfs of size bytes on a new temporary directory (unmounted when the test ends):
// a real filesystem that runs out of space. Skips when mounting is not permitted (not root, or a
// container without the capability).
func tmpfsDir(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root and CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// TestDiskFullMidSegment fills a small filesystem with commits: the commit that finds no space fails
// with an error that wraps ENOSPC (submission answers 452 4.3.1 for it) and a temporary relay.Error;
// every message acknowledged before is intact after a restart on the disk still full to the last byte
// of the last segment; the restarted queue delivers them (though it cannot record their removal), and
// once their segments are reclaimed new commits succeed again.
func TestDiskFullMidSegment(t *testing.T) {
	dir := tmpfsDir(t, 3<<20)
	tweak := func(o *Options) { o.SegmentBytes = 256 << 10 }
	h := open(t, dir+"/spool", TransportMap{}, tweak)
	bodies := map[string]string{}
	var full error
	for i := range 1000 {
		body := strings.Repeat(fmt.Sprintf("message %d\r\n", i), 1000) // 13 KB
		d, err := h.q.Create()
		must(t, err)
		if _, err := d.Write([]byte(body)); err != nil {
			full = err
			break
		}
		id, err := d.Commit(context.Background(), relay.Envelope{
			Channel: "Support", Transport: "upstream", Recipients: []string{"a@example.net"},
		})
		if err != nil {
			full = err
			break
		}
		bodies[id] = body
	}
	if full == nil {
		t.Fatal("1000 commits of 13 KB fitted in 3 MB")
	}
	if !errors.Is(full, syscall.ENOSPC) {
		t.Fatalf("commit on a full disk: %v, want an error wrapping ENOSPC", full)
	}
	if re, ok := relay.AsError(full); !ok || !re.Temporary() {
		t.Errorf("commit on a full disk: %#v, want a temporary relay.Error", full)
	}
	t.Logf("%d commits acknowledged before: %v", len(bodies), full)
	// A large body, written to a file of its own, meets the full disk in Write or Commit.
	d, err := h.q.Create()
	must(t, err)
	_, err = d.Write([]byte(strings.Repeat("large\r\n", 300_000)))
	if err == nil {
		_, err = d.Commit(context.Background(), relay.Envelope{Transport: "upstream", Recipients: []string{"a@example.net"}})
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("large body on a full disk: %v, want an error wrapping ENOSPC", err)
	}
	d.Abort()
	// Status records may use the room commits leave; use it all, to the last byte a record can take.
	var some Entry
	for id := range bodies {
		some, _ = h.q.Get(id)
		break
	}
	for i := 0; h.q.spool.replaceMeta(&some) == nil; i++ {
		if i > 10000 {
			t.Fatal("status records never filled the segment")
		}
	}
	for i := 0; h.q.spool.remove("00000000000000000") == nil; i++ {
		if i > 100000 {
			t.Fatal("removal records never filled the segment")
		}
	}
	h.closeNow(t)

	var delivered atomic.Int64
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		if want, ok := bodies[m.QueueID]; ok {
			if body := readBody(t, m); body != want {
				t.Errorf("%s: delivered %d bytes, committed %d", m.QueueID, len(body), len(want))
			}
			delivered.Add(1)
		}
		return relay.Result{Errs: make([]error, len(m.Recipients))}
	})}
	h2 := open(t, dir+"/spool", tr, tweak)
	for id := range bodies {
		if _, ok := h2.q.Get(id); !ok {
			t.Errorf("acknowledged message %s lost", id)
		}
	}
	h2.run(t)
	waitFor(t, "deliveries", 20*time.Second, func() bool { return len(h2.q.List()) == 0 })
	h2.q.spool.flush()
	h2.q.spool.reclaim()
	h2.q.spool.prepare()
	enqueue(t, h2.q, "after the disk was freed", "b@example.net")
	if n := delivered.Load(); n != int64(len(bodies)) {
		t.Errorf("delivered %d of %d", n, len(bodies))
	}
}
