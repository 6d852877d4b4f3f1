package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/relay"
)

// spoolRecord is one record of a segment as the test wrote it.
type spoolRecord struct {
	seg        string // file name
	start, end int64
	kind       byte
	id         string
}

// segmentRecords lists every whole record of every segment in dir, in order.
func segmentRecords(t testing.TB, dir string) []spoolRecord {
	t.Helper()
	var out []spoolRecord
	for _, name := range files(t, filepath.Join(dir, "seg")) {
		f, err := os.Open(filepath.Join(dir, "seg", name))
		must(t, err)
		st, _ := f.Stat()
		var buf []byte
		off := int64(0)
		for {
			kind, payload, grown, next, err := readRecord(f, st.Size(), off, buf)
			buf = grown
			if err != nil {
				break
			}
			r := spoolRecord{seg: name, start: off, end: next, kind: kind}
			switch kind {
			case recBody:
				r.id = string(payload[:idLen])
			case recCommit:
				e, err := parseCommit(payload)
				must(t, err)
				r.id = e.ID
			case recUpdate:
				e, err := parseMeta(payload)
				must(t, err)
				r.id = e.ID
			case recRemove:
				r.id = string(payload)
			}
			out = append(out, r)
			off = next
		}
		f.Close()
	}
	return out
}

// expectedAfterDamage replays the records that survive damage to segment seg from offset at on (every
// record of seg that does not end by at is lost) and returns the ids that must be recovered.
func expectedAfterDamage(recs []spoolRecord, seg string, at int64) []string {
	live := map[string]bool{}
	for _, r := range recs {
		if r.seg == seg && r.end > at {
			continue
		}
		switch r.kind {
		case recCommit:
			live[r.id] = true
		case recRemove:
			delete(live, r.id)
		}
	}
	var ids []string
	for id := range live {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// seedSpool commits n messages with distinct bodies over several small segments and delivers every
// third (its removal record follows), then closes the queue. It returns the committed bodies by id.
func seedSpool(t testing.TB, dir string, n int) map[string]string {
	t.Helper()
	h := open(t, dir, TransportMap{}, func(o *Options) { o.SegmentBytes = 64 << 10 })
	bodies := map[string]string{}
	for i := range n {
		body := strings.Repeat(fmt.Sprintf("message %d of the seed\r\n", i), 20+i%50)
		id := enqueue(t, h.q, body, "a@example.net")
		bodies[id] = body
		if i%3 == 2 {
			must(t, h.q.Drop(id))
		}
	}
	h.closeNow(t)
	return bodies
}

// copyDir copies a spool directory (flat files in its subdirectories) to a new temporary one.
func copyDir(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	for _, sub := range []string{"seg", "big", "quarantine"} {
		must(t, os.MkdirAll(filepath.Join(dst, sub), 0o700))
		for _, name := range files(t, filepath.Join(src, sub)) {
			data, err := os.ReadFile(filepath.Join(src, sub, name))
			must(t, err)
			must(t, os.WriteFile(filepath.Join(dst, sub, name), data, 0o600))
		}
	}
	return dst
}

// checkRecovered opens dir and checks that exactly want is resumed, each with the body it was
// committed with.
func checkRecovered(t *testing.T, dir string, want []string, bodies map[string]string, what string) {
	t.Helper()
	h := open(t, dir, TransportMap{}, func(o *Options) { o.SegmentBytes = 64 << 10 })
	defer h.closeNow(t)
	var got []string
	for _, e := range h.q.List() {
		got = append(got, e.ID)
		body, err := spoolBody(h.q, e.ID)
		if err != nil || body != bodies[e.ID] || e.Size != int64(len(body)) {
			t.Errorf("%s: %s resumed with a body of %d bytes (%v), committed %d", what, e.ID, len(body), err, len(bodies[e.ID]))
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s: resumed %d entries, want %d\n got %v\nwant %v", what, len(got), len(want), got, want)
	}
	if v := testutil.ToFloat64(h.m.QueueQuarantined); v != 0 {
		t.Errorf("%s: %v quarantined", what, v)
	}
}

// TestTornTailRecovery cuts a segment at every record boundary and at random offsets inside records,
// as a crash during writes leaves it: every entry whose commit record is whole before the cut comes
// back with its exact body, and none whose record was cut.
func TestTornTailRecovery(t *testing.T) {
	src := t.TempDir()
	bodies := seedSpool(t, src, 60)
	recs := segmentRecords(t, src)
	segs := files(t, filepath.Join(src, "seg"))
	if len(segs) < 3 {
		t.Fatalf("seed spans %d segments, want several", len(segs))
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var cuts []spoolRecord
	for _, r := range recs {
		cuts = append(cuts, r) // at its start: the record and everything after it are gone
	}
	for range 40 {
		r := recs[rng.IntN(len(recs))]
		cuts = append(cuts, spoolRecord{seg: r.seg, start: r.start + 1 + rng.Int64N(r.end-r.start-1)})
	}
	for _, c := range cuts {
		dir := copyDir(t, src)
		path := filepath.Join(dir, "seg", c.seg)
		// A preallocated segment is zero-filled, so a torn write leaves zeros after it; truncation is
		// the same to the scanner and also covers a file cut short.
		if rng.IntN(2) == 0 {
			must(t, os.Truncate(path, c.start))
		} else {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			must(t, err)
			st, _ := f.Stat()
			_, err = f.WriteAt(make([]byte, st.Size()-c.start), c.start)
			must(t, err)
			f.Close()
		}
		want := expectedAfterDamage(recs, c.seg, c.start)
		checkRecovered(t, dir, want, bodies, fmt.Sprintf("cut %s at %d", c.seg, c.start))
		if t.Failed() {
			return
		}
	}
}

// TestCorruptRecordRecovery flips one byte at random offsets: the damaged record and the rest of its
// segment are lost (they were not acknowledged if the damage is a torn write), every other segment is
// read whole, and nothing recovered carries a damaged body.
func TestCorruptRecordRecovery(t *testing.T) {
	src := t.TempDir()
	bodies := seedSpool(t, src, 60)
	recs := segmentRecords(t, src)
	rng := rand.New(rand.NewPCG(3, 4))
	for range 60 {
		r := recs[rng.IntN(len(recs))]
		at := r.start + rng.Int64N(r.end-r.start)
		dir := copyDir(t, src)
		path := filepath.Join(dir, "seg", r.seg)
		data, err := os.ReadFile(path)
		must(t, err)
		data[at] ^= byte(1 + rng.IntN(255))
		must(t, os.WriteFile(path, data, 0o600))
		// Every record of the segment from the damaged one on is lost: the replay keeps those that end
		// at or before its start.
		want := expectedAfterDamage(recs, r.seg, r.start)
		checkRecovered(t, dir, want, bodies, fmt.Sprintf("byte %d of %s flipped", at, r.seg))
		if t.Failed() {
			return
		}
	}
}

// TestQuarantine: a commit record that is whole but cannot be used — metadata of an unknown version,
// a big body that is gone — is kept in quarantine/ and counted, never delivered; the rest resumes.
func TestQuarantine(t *testing.T) {
	dir := t.TempDir()
	seed := open(t, dir, TransportMap{}, nil)
	good := enqueue(t, seed.q, "good", "a@example.net")
	future := enqueue(t, seed.q, "future", "b@example.net")
	noBody := enqueue(t, seed.q, strings.Repeat("big ", 1<<18), "c@example.net") // 1 MiB: its own file
	seed.closeNow(t)
	must(t, os.Remove(filepath.Join(dir, "big", noBody+".eml")))
	// Rewrite future's commit record with version 9 and a valid CRC: a newer mailgate's format.
	for _, r := range segmentRecords(t, dir) {
		if r.kind != recCommit || r.id != future {
			continue
		}
		path := filepath.Join(dir, "seg", r.seg)
		data, err := os.ReadFile(path)
		must(t, err)
		rec := data[r.start:r.end]
		payload := []byte(strings.Replace(string(rec[recHeader:]), `"version":1`, `"version":9`, 1))
		copy(rec[recHeader:], payload)
		binary.LittleEndian.PutUint32(rec[4:8], recordCRC(recCommit, rec[recHeader:]))
		must(t, os.WriteFile(path, data, 0o600))
	}

	h := open(t, dir, TransportMap{}, nil)
	defer h.closeNow(t)
	if l := h.q.List(); len(l) != 1 || l[0].ID != good {
		t.Errorf("List after quarantine = %+v", l)
	}
	if v := testutil.ToFloat64(h.m.QueueQuarantined); v != 2 {
		t.Errorf("QueueQuarantined = %v, want 2", v)
	}
	q := files(t, filepath.Join(dir, "quarantine"))
	if !slices.Contains(q, noBody+".json") || len(q) != 2 {
		t.Errorf("quarantine holds %v", q)
	}
	for _, name := range q {
		data, err := os.ReadFile(filepath.Join(dir, "quarantine", name))
		if err != nil || !strings.Contains(string(data), `"recipients"`) {
			t.Errorf("quarantined %s: %q %v", name, data, err)
		}
	}
}

// TestLargeBodyOwnFile: a body above LargeMessageBytes goes to big/, is delivered whole from there,
// survives a restart, and its file goes once its removal is durable.
func TestLargeBodyOwnFile(t *testing.T) {
	dir := t.TempDir()
	body := strings.Repeat("0123456789abcdef\r\n", 200_000) // 3.6 MB
	seed := open(t, dir, TransportMap{}, nil)
	id := enqueue(t, seed.q, body, "a@example.net")
	enqueue(t, seed.q, "small", "b@example.net")
	if f := files(t, filepath.Join(dir, "big")); !slices.Equal(f, []string{id + ".eml"}) {
		t.Errorf("big/ = %v", f)
	}
	seed.closeNow(t)

	got := make(chan string, 2)
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		got <- readBody(t, m)
		return relay.Result{Errs: make([]error, len(m.Recipients))}
	})}
	h := open(t, dir, tr, nil)
	h.run(t)
	waitFor(t, "deliveries", 10*time.Second, func() bool { return len(h.q.List()) == 0 })
	bodies := []string{<-got, <-got}
	if !slices.Contains(bodies, body) || !slices.Contains(bodies, "small") {
		t.Errorf("delivered bodies of %d and %d bytes", len(bodies[0]), len(bodies[1]))
	}
	h.q.spool.flush()
	h.q.spool.reclaim()
	if f := files(t, filepath.Join(dir, "big")); len(f) != 0 {
		t.Errorf("big/ after delivery = %v", f)
	}
}

// TestCompactionBoundsDisk keeps one message deferred while hundreds pass through small segments:
// without copying it forward every segment since its commit would stay on disk. The spool must stay
// within its bound (twice the live bytes plus two segments, plus the one made ahead) and the deferred
// message must survive, whole, a restart.
func TestCompactionBoundsDisk(t *testing.T) {
	dir := t.TempDir()
	const seg = 64 << 10
	tr := TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		if m.Recipients[0] == "later@example.net" {
			return relay.Failed(1, tempFail("mailbox busy"))
		}
		return relay.Result{Errs: make([]error, len(m.Recipients))}
	})}
	tweak := func(o *Options) {
		o.SegmentBytes = seg
		o.Retry = Backoff{Schedule: []time.Duration{time.Hour}, Jitter: -1}
	}
	h := open(t, dir, tr, tweak)
	h.run(t)
	deferredBody := strings.Repeat("deferred for long\r\n", 100)
	deferred := enqueue(t, h.q, deferredBody, "later@example.net")
	body := strings.Repeat("x", 4000)
	maxDisk := int64(0)
	for i := range 400 {
		enqueue(t, h.q, body, "now@example.net")
		if i%20 == 19 {
			waitFor(t, "deliveries", 10*time.Second, func() bool { return len(h.q.List()) == 1 })
			h.q.spool.flush()
			h.q.compact()
			h.q.spool.flush()
			h.q.spool.reclaim()
			disk, live, _ := h.q.spool.usage()
			maxDisk = max(maxDisk, disk)
			if bound := 2*live + 4*seg; disk > bound {
				t.Fatalf("after %d messages the spool holds %d bytes for %d live (bound %d)", i+1, disk, live, bound)
			}
		}
	}
	disk, live, n := h.q.spool.usage()
	t.Logf("400 × 4 KB through 64 KiB segments, one deferred: at most %d bytes on disk, now %d in %d segments for %d live bytes", maxDisk, disk, n, live)
	if len(files(t, filepath.Join(dir, "seg"))) > 5 {
		t.Errorf("segments on disk: %v", files(t, filepath.Join(dir, "seg")))
	}
	if got, err := spoolBody(h.q, deferred); err != nil || got != deferredBody {
		t.Errorf("deferred body after compaction: %d bytes, %v", len(got), err)
	}
}

// TestCommitReturnsAfterItsSync: Commit returns only once a sync covers every byte appended before it
// returned (a kill -9 cannot show this: the page cache survives a killed process). The commits are
// sequential with nothing else appending, so the spool's synced mark must equal its written mark after
// each.
func TestCommitReturnsAfterItsSync(t *testing.T) {
	h := open(t, t.TempDir(), TransportMap{}, nil)
	defer h.closeNow(t)
	for i := range 30 {
		enqueue(t, h.q, fmt.Sprintf("message %d", i), "a@example.net")
		h.q.spool.mu.Lock()
		written, synced := h.q.spool.written, h.q.spool.synced
		h.q.spool.mu.Unlock()
		if synced != written {
			t.Fatalf("commit %d returned with %d bytes written and %d synced", i, written, synced)
		}
	}
}

// TestFinalStateWithoutRemoval: an entry whose last recorded state has every recipient final but no
// removal record (none is written that way, but a spool from a crash or another version may hold one)
// is not resumed, and its removal is recorded so it stays gone.
func TestFinalStateWithoutRemoval(t *testing.T) {
	dir := t.TempDir()
	seed := open(t, dir, TransportMap{}, nil)
	id := enqueue(t, seed.q, "final", "a@example.net")
	keep := enqueue(t, seed.q, "pending", "b@example.net")
	e, _ := seed.q.Get(id)
	e.Recipients[0].Status = Delivered
	must(t, seed.q.spool.replaceMeta(&e))
	seed.closeNow(t)
	for range 2 {
		h := open(t, dir, TransportMap{}, nil)
		if l := h.q.List(); len(l) != 1 || l[0].ID != keep {
			t.Errorf("resumed %+v", l)
		}
		if live := spoolLive(h.q); !slices.Equal(live, []string{keep}) {
			t.Errorf("spool holds %v", live)
		}
		h.closeNow(t)
	}
	removed := false
	for _, r := range segmentRecords(t, dir) {
		removed = removed || r.kind == recRemove && r.id == id
	}
	if !removed {
		t.Error("no removal recorded")
	}
}

// TestRecordLargerThanSegment: metadata larger than a segment (a thousand recipients) gets a segment of
// its own, and records written after it are replayed after it: a drop recorded later stays a drop.
func TestRecordLargerThanSegment(t *testing.T) {
	dir := t.TempDir()
	tweak := func(o *Options) { o.SegmentBytes = 64 << 10 }
	seed := open(t, dir, TransportMap{}, tweak)
	var rcpts []string
	for i := range 1000 {
		rcpts = append(rcpts, fmt.Sprintf("customer-%04d@example.net", i))
	}
	// The next segment has been made ahead (64 KiB: too small for the record).
	waitFor(t, "a segment made ahead", 5*time.Second, func() bool {
		seed.q.spool.mu.Lock()
		defer seed.q.spool.mu.Unlock()
		return seed.q.spool.ready != nil
	})
	many := enqueue(t, seed.q, "to many", rcpts...)
	b := enqueue(t, seed.q, "b", "b@example.net")
	must(t, seed.q.Drop(many))
	c := enqueue(t, seed.q, "c", "c@example.net")
	seed.closeNow(t)
	h := open(t, dir, TransportMap{}, tweak)
	defer h.closeNow(t)
	var got []string
	for _, e := range h.q.List() {
		got = append(got, e.ID)
	}
	if !slices.Equal(got, []string{b, c}) {
		t.Errorf("resumed %v, want %v (the dropped one is %s)", got, []string{b, c}, many)
	}
}
