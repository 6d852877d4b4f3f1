package queue

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// spool is the log-structured store of the queue (the package doc describes the format): segment files
// of framed records, bodies above a size in files of their own, one group-committed fdatasync shared by
// every commit waiting at the time.
type spool struct {
	dir, segDir, bigDir, quarantineDir string
	segmentBytes                       int64 // size of a new segment
	largeBody                          int64 // bodies above this go to big/
	log                                *slog.Logger
	segSync, bigSync                   *dirSyncer
	bufs                               sync.Pool // *[]byte: drafts' record buffers

	mu      sync.Mutex
	cond    *sync.Cond          // on mu: a sync ended, a segment was made
	segs    []*segment          // oldest first; the last is the one appended to
	locs    map[string]location // by queue id: where each live entry's body and commit record are
	nextSeq uint64
	ready   *segment // made ahead of need by the background goroutine
	// preparing is true while the background goroutine makes the next segment.
	preparing bool
	// written counts bytes appended since start, synced the prefix of them known durable: a commit
	// waits until synced covers its record.
	written, synced uint64
	syncing         bool
	dirty           []*segment // appended to since the last sync began
	unlinks         []pendingUnlink
	err             error // a failed fdatasync: sticky, see the package doc
	closed          bool

	kick       chan struct{} // asks the background goroutine to prepare a segment
	stop, done chan struct{}
}

type segment struct {
	seq       uint64
	path      string
	f         *os.File
	size      int64
	off       int64  // end of the records written (or found at start)
	live      int    // entries whose latest commit record is here
	liveBytes int64  // bytes of their body and commit records
	readers   int    // bodies being read by an attempt
	freedAt   uint64 // value of written when live last dropped to 0
	dirty     bool
}

// location is where a live entry's commit record (and body) is.
type location struct {
	seg      *segment // holds the commit record (and the body unless big)
	big      bool     // body in big/<id>.eml
	off, n   int64    // body bytes in seg
	recBytes int64    // body and commit record bytes, for the disk accounting
}

type pendingUnlink struct {
	after uint64 // unlink once synced reaches this
	path  string
}

const segSuffix = ".seg"

func newSpool(dir string, segmentBytes, largeBody int64, log *slog.Logger) (*spool, error) {
	s := &spool{
		dir:           dir,
		segDir:        filepath.Join(dir, "seg"),
		bigDir:        filepath.Join(dir, "big"),
		quarantineDir: filepath.Join(dir, "quarantine"),
		segmentBytes:  segmentBytes,
		largeBody:     largeBody,
		log:           log,
		locs:          map[string]location{},
		kick:          make(chan struct{}, 1),
		stop:          make(chan struct{}),
		done:          make(chan struct{}),
	}
	s.cond = sync.NewCond(&s.mu)
	for _, d := range []string{s.dir, s.segDir, s.bigDir, s.quarantineDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	// The subdirectories must themselves survive a power cut before anything is put in them.
	if err := syncDir(s.dir); err != nil {
		return nil, err
	}
	s.segSync = newDirSyncer(s.segDir)
	s.bigSync = newDirSyncer(s.bigDir)
	return s, nil
}

func (s *spool) segPath(seq uint64) string {
	return filepath.Join(s.segDir, fmt.Sprintf("%016x%s", seq, segSuffix))
}
func (s *spool) bigPath(id string) string { return filepath.Join(s.bigDir, id+".eml") }

// start picks the segment this run appends to and starts the background goroutine. The last segment
// found at start is reused when it has room: its tail after the last whole record is zeroed first (it
// may hold a torn record), which needs no new space on a full disk, so the queue can start, deliver and
// so free space. Otherwise a new segment is made.
func (s *spool) start() error {
	if n := len(s.segs); n > 0 && s.segs[n-1].off < s.segs[n-1].size {
		last := s.segs[n-1]
		if err := zeroTail(last); err != nil {
			return err
		}
	} else if seg, err := s.makeSegment(s.nextSeq, s.segmentBytes); err == nil {
		s.nextSeq++
		s.segs = append(s.segs, seg)
	} else if n == 0 {
		return err
	} else {
		// The disk is full: start anyway, so deliveries free space; appends make a segment once they can.
		s.nextSeq++
		s.log.Error("spool has no room for new messages", "err", err)
	}
	go s.background()
	s.kickPrepare()
	return nil
}

// zeroTail overwrites a segment from the end of its records to its end with zeros and syncs it.
func zeroTail(seg *segment) error {
	zeros := make([]byte, min(seg.size-seg.off, 1<<20))
	for off := seg.off; off < seg.size; off += int64(len(zeros)) {
		if _, err := seg.f.WriteAt(zeros[:min(int64(len(zeros)), seg.size-off)], off); err != nil {
			return fmt.Errorf("zero %s: %w", seg.path, err)
		}
	}
	if err := fdatasync(seg.f); err != nil {
		return fmt.Errorf("fdatasync %s: %w", seg.path, err)
	}
	return nil
}

// makeSegment creates, zero-fills and fsyncs a segment file, and fsyncs the directory, so that nothing
// but fdatasync of data in place remains for the commits that use it. Zero-filled, not fallocated:
// overwriting written blocks needs no journal commit for the extent at each fdatasync (measured on
// this ext4: 100 µs for write(10 KiB)+fdatasync against 200–225 µs in a fallocated or growing file).
func (s *spool) makeSegment(seq uint64, size int64) (*segment, error) {
	path := s.segPath(seq)
	f, err := openFile(path, syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*segment, error) {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("make segment: %w", err)
	}
	seg := &segment{seq: seq, path: path, f: f, size: size}
	if err := zeroTail(seg); err != nil {
		return fail(err)
	}
	if err := s.segSync.Sync(); err != nil {
		return fail(err)
	}
	return seg, nil
}

func (s *spool) kickPrepare() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// prepare makes the next segment ahead of need, off the commit path.
func (s *spool) prepare() {
	s.mu.Lock()
	if s.ready != nil || s.preparing || s.closed {
		s.mu.Unlock()
		return
	}
	s.preparing = true
	seq := s.nextSeq
	s.nextSeq++
	s.mu.Unlock()
	seg, err := s.makeSegment(seq, s.segmentBytes)
	s.mu.Lock()
	s.preparing = false
	if err == nil {
		s.ready = seg
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	if err != nil {
		s.log.Error("spool segment could not be made ahead", "err", err)
	}
}

// background prepares segments when asked, and once a second makes status records durable, unlinks
// what they freed and deletes segments no entry needs.
func (s *spool) background() {
	defer close(s.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-s.kick:
			s.prepare()
		case <-t.C:
			s.flush()
			s.prepare() // after a failure (disk full), try again
		}
	}
}

// flush makes everything appended so far durable, then reclaims what that frees.
func (s *spool) flush() {
	s.mu.Lock()
	lsn := s.written
	s.mu.Unlock()
	if err := s.waitDurable(lsn); err != nil {
		return // sticky, logged by the commits that fail on it
	}
	s.reclaim()
}

// reclaim unlinks big bodies whose removal is durable and deletes segments that no entry needs, oldest
// first: a newer segment may hold the removal or the copy that freed an older one, and must outlive it.
// A freed segment is deleted only once the records that freed it are durable.
func (s *spool) reclaim() {
	s.mu.Lock()
	var paths []string
	keep := s.unlinks[:0]
	for _, u := range s.unlinks {
		if u.after <= s.synced {
			paths = append(paths, u.path)
		} else {
			keep = append(keep, u)
		}
	}
	s.unlinks = keep
	var gone []*segment
	for len(s.segs) > 1 {
		old := s.segs[0]
		if old.live > 0 || old.readers > 0 || old.freedAt > s.synced {
			break
		}
		gone = append(gone, old)
		s.segs = s.segs[1:]
	}
	s.mu.Unlock()
	for _, seg := range gone {
		seg.f.Close()
		paths = append(paths, seg.path)
	}
	// No directory fsync: a deletion forgotten in a crash brings back a segment whose entries later
	// segments remove or replace.
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("spool cleanup failed", "file", p, "err", err)
		}
	}
}

// append writes rec at the end of the current segment (moving to the next one when it does not fit)
// and calls placed, under the spool lock, with where it went. It does not wait for the data to be
// durable: waitDurable(lsn) does.
//
// keep is room the record must leave in the current segment when no next segment could be made ahead
// (the disk is full): commits pass reserveFor(segmentBytes), status records 0, so that when new
// messages are refused for lack of space the deliveries that free it can still be recorded.
func (s *spool) append(rec []byte, keep int64, placed func(seg *segment, off int64)) (lsn uint64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	need := int64(len(rec))
	var cur *segment
	for rolled := false; ; {
		if s.err != nil {
			return 0, s.err
		}
		if s.closed {
			return 0, errors.New("spool closed")
		}
		cur = s.segs[len(s.segs)-1]
		room := cur.size - cur.off
		// The reserve only decides whether to try for a new segment: one just made is used.
		if room >= need && (rolled || room >= need+keep || s.ready != nil) {
			break
		}
		if s.preparing {
			s.cond.Wait() // the next segment is being made: wait for it rather than make another
			continue
		}
		if err := s.rollLocked(need); err != nil {
			return 0, err
		}
		rolled = true
	}
	if _, err := cur.f.WriteAt(rec, cur.off); err != nil {
		// Nothing after cur.off counts: the next record overwrites whatever part of this one landed.
		return 0, fmt.Errorf("append to %s: %w", cur.path, err)
	}
	off := cur.off
	cur.off += need
	s.written += uint64(need)
	if !cur.dirty {
		cur.dirty = true
		s.dirty = append(s.dirty, cur)
	}
	if placed != nil {
		placed(cur, off)
	}
	return s.written, nil
}

// rollLocked moves to a new segment with room for need bytes: the one made ahead when there is one,
// otherwise one made now (the disk did not keep up, or the last attempt failed — disk full).
//
// Segments are used in the order of their sequence numbers, which is the order recovery replays them
// in: a segment made ahead but too small for a record (larger than a segment) is passed over empty
// rather than used after the larger one made for the record.
func (s *spool) rollLocked(need int64) error {
	if seg := s.ready; seg != nil {
		s.ready = nil
		s.segs = append(s.segs, seg)
		s.kickPrepare()
		if seg.size >= need {
			return nil
		}
	}
	seq := s.nextSeq
	s.nextSeq++
	seg, err := s.makeSegment(seq, max(s.segmentBytes, need))
	if err != nil {
		return err
	}
	s.segs = append(s.segs, seg)
	s.kickPrepare()
	return nil
}

// reserveFor is the room commits leave in a segment for status records when the disk is full.
func reserveFor(segmentBytes int64) int64 { return segmentBytes / 16 }

// waitDurable returns once every byte appended up to lsn is on disk. Concurrent callers share one
// fdatasync per segment written: a caller waits for the sync in flight when it started after the
// caller's bytes were written, otherwise for the next one, which starts as soon as the one in flight
// ends and covers everything written until then. No caller waits behind more than one sync that does
// not cover it, and no timer delays a sync.
func (s *spool) waitDurable(lsn uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.synced < lsn && s.err == nil {
		if s.syncing {
			s.cond.Wait()
			continue
		}
		s.syncing = true
		target := s.written
		dirty := s.dirty
		s.dirty = nil
		for _, seg := range dirty {
			seg.dirty = false
		}
		s.mu.Unlock()
		var err error
		for _, seg := range dirty {
			// A segment deleted meanwhile held nothing anyone needs (reclaim).
			if e := fdatasync(seg.f); e != nil && !errors.Is(e, os.ErrClosed) && err == nil {
				err = fmt.Errorf("fdatasync %s: %w", seg.path, e)
			}
		}
		s.mu.Lock()
		s.syncing = false
		if err != nil {
			// The page cache no longer tells what is on disk: every later commit fails until a
			// restart rescans the segments.
			s.err = err
		} else {
			s.synced = target
		}
		s.cond.Broadcast()
	}
	return s.err
}

func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("fdatasync", serr)
	}
	return nil
}

// setLive records that id's latest commit record (and body) is at loc, releasing its previous place.
func (s *spool) setLiveLocked(id string, loc location) {
	s.releaseLocked(id)
	s.locs[id] = loc
	loc.seg.live++
	loc.seg.liveBytes += loc.recBytes
}

// releaseLocked forgets id's place: its segment may become free (once what freed it is durable).
func (s *spool) releaseLocked(id string) (location, bool) {
	old, ok := s.locs[id]
	if !ok {
		return location{}, false
	}
	delete(s.locs, id)
	old.seg.live--
	old.seg.liveBytes -= old.recBytes
	if old.seg.live == 0 {
		old.seg.freedAt = s.written
	}
	return old, true
}

// appendCommit frames a commit record: back is the distance from its start to the entry's body record
// in the same segment (0: body in big/).
func appendCommit(b []byte, back int64, meta []byte) []byte {
	var hdr [8]byte
	binary.LittleEndian.PutUint64(hdr[:], uint64(back))
	return appendRecord(b, recCommit, hdr[:], meta)
}

// replaceMeta appends e's metadata after an attempt. It does not wait for a sync: after a crash the
// previous state may come back, which only repeats an attempt (at-least-once), never loses a recipient;
// the next commit's sync, or the background flush within a second, makes it durable anyway.
func (s *spool) replaceMeta(e *Entry) error {
	meta, err := encodeMeta(e)
	if err != nil {
		return err
	}
	_, err = s.append(appendRecord(nil, recUpdate, meta), 0, nil)
	return err
}

// remove appends id's removal record; its segment is reclaimed once that is durable (and older
// segments are gone), and a big body is unlinked then. Like replaceMeta it does not wait for a sync.
//
// The entry's place is released even when the record cannot be written (the disk is full): deleting
// its segment later removes it as surely, and until then a crash only repeats its delivery. Without
// this a full disk would stay full, since nothing could be reclaimed.
func (s *spool) remove(id string) error {
	lsn, err := s.append(appendRecord(nil, recRemove, []byte(id)), 0, nil)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		lsn = s.written
	}
	if old, ok := s.releaseLocked(id); ok && old.big {
		s.unlinks = append(s.unlinks, pendingUnlink{after: lsn, path: s.bigPath(id)})
	}
	return err
}

// open returns a reader of id's body. A segment stays open while a reader of it is.
func (s *spool) open(id string) (io.ReadCloser, error) {
	s.mu.Lock()
	loc, ok := s.locs[id]
	if ok && !loc.big {
		loc.seg.readers++
	}
	s.mu.Unlock()
	switch {
	case !ok:
		return nil, fmt.Errorf("queue: no body for %s", id)
	case loc.big:
		return openFile(s.bigPath(id), syscall.O_RDONLY, 0)
	}
	return &bodyReader{SectionReader: io.NewSectionReader(loc.seg.f, loc.off, loc.n), s: s, seg: loc.seg}, nil
}

type bodyReader struct {
	*io.SectionReader
	s    *spool
	seg  *segment
	once sync.Once
}

func (r *bodyReader) Close() error {
	r.once.Do(func() {
		r.s.mu.Lock()
		r.seg.readers--
		r.s.mu.Unlock()
	})
	return nil
}

// copyForward appends a live entry's body and current metadata to the current segment, so the old
// segment can be reclaimed. The caller holds Queue.mu and the entry is not being delivered, so no
// status record of it can be appended meanwhile (it would land before the copy and be overridden).
func (s *spool) copyForward(e *Entry) error {
	s.mu.Lock()
	loc, ok := s.locs[e.ID]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	meta, err := encodeMeta(e)
	if err != nil {
		return err
	}
	var rec []byte
	var back int64
	if !loc.big {
		rec = make([]byte, recHeader+idLen+int(loc.n))
		copy(rec[recHeader:], e.ID)
		// The old segment cannot go while this entry's commit record is there.
		if _, err := loc.seg.f.ReadAt(rec[recHeader+idLen:], loc.off); err != nil {
			return fmt.Errorf("read %s for copy: %w", loc.seg.path, err)
		}
		putHeader(rec, recBody)
		back = int64(len(rec))
	}
	rec = appendCommit(rec, back, meta)
	_, err = s.append(rec, 0, func(seg *segment, off int64) {
		nl := location{seg: seg, big: loc.big, n: loc.n, recBytes: int64(len(rec))}
		if !loc.big {
			nl.off = off + recHeader + idLen
		}
		s.setLiveLocked(e.ID, nl)
	})
	return err
}

// compactable returns the ids whose commit records are in the oldest segments when the spool holds
// more than twice its live bytes plus two segments: as many segments, oldest first, as it takes to get
// back under that. Copying their entries forward frees them, so entries deferred for days do not keep
// every segment written since on disk; the copying costs at most what the garbage it frees weighs.
func (s *spool) compactable() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.segs) < 3 {
		return nil
	}
	var total, live int64
	for _, seg := range s.segs {
		total += seg.size
		live += seg.liveBytes
	}
	excess := total - (2*live + 2*s.segmentBytes)
	if excess <= 0 {
		return nil
	}
	old := map[*segment]bool{}
	for _, seg := range s.segs[:len(s.segs)-1] {
		if excess <= 0 {
			break
		}
		old[seg] = true
		excess -= seg.size
	}
	var ids []string
	for id, loc := range s.locs {
		if old[loc.seg] {
			ids = append(ids, id)
		}
	}
	return ids
}

// usage reports the bytes of segments on disk and the bytes live entries need of them.
func (s *spool) usage() (disk, live int64, segments int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, seg := range s.segs {
		disk += seg.size
		live += seg.liveBytes
	}
	if s.ready != nil {
		disk += s.ready.size
	}
	return disk, live, len(s.segs)
}

// close makes everything appended durable and releases the files. No append may follow.
func (s *spool) close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	started := len(s.segs) > 0
	s.mu.Unlock()
	if started {
		close(s.stop)
		<-s.done
	}
	s.mu.Lock()
	lsn := s.written
	s.mu.Unlock()
	err := s.waitDurable(lsn)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, seg := range s.segs {
		seg.f.Close()
	}
	if s.ready != nil {
		s.ready.f.Close()
	}
	s.segSync.close()
	s.bigSync.close()
	return err
}

// --- drafts ---

// draft is a message body being written: in memory, as the body record it will be appended as, up to
// the large-body size; beyond it, in a file of its own in big/.
type draft struct {
	q    *Queue
	id   string
	bufp *[]byte // record header, id, body so far
	big  *os.File
	bw   *bufio.Writer
	size int64
	done bool
	err  error // first write error: Commit refuses a body that was not written whole
}

func (s *spool) newDraft(q *Queue, id string) *draft {
	bp, _ := s.bufs.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 0, 32<<10)
		bp = &b
	}
	b := append((*bp)[:0], make([]byte, recHeader)...)
	*bp = append(b, id...)
	return &draft{q: q, id: id, bufp: bp}
}

func (d *draft) Write(p []byte) (int, error) {
	if d.done {
		return 0, errors.New("queue: write to a finished draft")
	}
	if d.err != nil {
		return 0, d.err
	}
	sp := d.q.spool
	if d.big == nil && d.size+int64(len(p)) > sp.largeBody {
		if err := d.spill(); err != nil {
			d.err = err
			return 0, err
		}
	}
	var n int
	var err error
	if d.big != nil {
		n, err = d.bw.Write(p)
	} else {
		*d.bufp = append(*d.bufp, p...)
		n = len(p)
	}
	d.size += int64(n)
	if err != nil {
		d.err = err
	}
	return n, err
}

// spill moves the body written so far to big/<id>.eml; the rest follows it there.
func (d *draft) spill() error {
	sp := d.q.spool
	f, err := openFile(sp.bigPath(d.id), syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	d.big, d.bw = f, bufio.NewWriterSize(f, 256<<10)
	_, err = d.bw.Write((*d.bufp)[recHeader+idLen:])
	d.release()
	return err
}

func (d *draft) release() {
	if d.bufp == nil {
		return
	}
	if cap(*d.bufp) <= 2<<20 {
		d.q.spool.bufs.Put(d.bufp)
	}
	d.bufp = nil
}

func (d *draft) Abort() error {
	if d.done {
		return nil
	}
	d.done = true
	return d.abortFiles()
}

// abortFiles releases what an uncommitted draft holds: its buffer, or its big file (once its commit
// record is appended the big file is no longer the draft's: d.big is nil then).
func (d *draft) abortFiles() error {
	d.release()
	if d.big == nil {
		return nil
	}
	d.big.Close()
	d.big = nil
	if err := os.Remove(d.q.spool.bigPath(d.id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// write makes the draft's body and e's metadata durable, as the package doc says: one append of the
// body and commit records, then the group sync; a big body is fsynced (with big/) first.
func (s *spool) write(d *draft, e *Entry) error {
	meta, err := encodeMeta(e)
	if err != nil {
		return err
	}
	var rec []byte
	var back int64
	if d.big == nil {
		rec = *d.bufp
		putHeader(rec, recBody)
		back = int64(len(rec))
	} else {
		if err := d.bw.Flush(); err != nil {
			return err
		}
		if err := d.big.Sync(); err != nil {
			return err
		}
		if err := d.big.Close(); err != nil {
			return err
		}
		d.big = nil
		// The file's name must be durable before a commit record points to it.
		if err := s.bigSync.Sync(); err != nil {
			return err
		}
	}
	rec = appendCommit(rec, back, meta)
	if d.bufp != nil {
		*d.bufp = rec // keep the grown buffer for the pool
	}
	lsn, err := s.append(rec, reserveFor(s.segmentBytes), func(seg *segment, off int64) {
		loc := location{seg: seg, big: back == 0, n: d.size, recBytes: int64(len(rec))}
		if back != 0 {
			loc.off = off + recHeader + idLen
		}
		s.setLiveLocked(e.ID, loc)
	})
	d.release()
	if err != nil {
		return err
	}
	return s.waitDurable(lsn)
}

// --- recovery ---

// recovered is an entry found by the start-up scan.
type recovered struct {
	entry Entry
	loc   location
}

// recover scans every segment in order, each up to its first record that is not whole, and rebuilds
// the live entries; see the package doc's Start-up section. quarantine keeps what cannot be used.
func (s *spool) recover(quarantine func(name string, data []byte, cause error)) (map[string]Entry, error) {
	des, err := os.ReadDir(s.segDir)
	if err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, de := range des {
		name, ok := strings.CutSuffix(de.Name(), segSuffix)
		seq, perr := strconv.ParseUint(name, 16, 64)
		if !ok || perr != nil || len(name) != 16 {
			s.log.Warn("unexpected file in spool ignored", "file", de.Name())
			continue
		}
		seqs = append(seqs, seq)
	}
	slices.Sort(seqs)
	found := map[string]*recovered{}
	live := func(r *recovered) { r.loc.seg.live++; r.loc.seg.liveBytes += r.loc.recBytes }
	unlive := func(r *recovered) { r.loc.seg.live--; r.loc.seg.liveBytes -= r.loc.recBytes }
	for _, seq := range seqs {
		s.nextSeq = seq + 1
		seg, err := s.scanSegment(seq, func(seg *segment, kind byte, off, next int64, payload []byte, body func(back int64) (string, int64, int64, bool)) {
			switch kind {
			case recCommit:
				e, err := parseCommit(payload)
				if err != nil {
					quarantine(fmt.Sprintf("%016x-%d.meta", seq, off), payload, err)
					return
				}
				back := int64(binary.LittleEndian.Uint64(payload[:8]))
				r := &recovered{entry: e, loc: location{seg: seg, big: back == 0, n: e.Size, recBytes: next - off}}
				if back != 0 {
					id, boff, n, ok := body(back)
					if !ok || id != e.ID || n != e.Size {
						quarantine(fmt.Sprintf("%016x-%d.meta", seq, off), payload[8:], errors.New("commit record without its body"))
						return
					}
					r.loc.off = boff
					r.loc.recBytes += back
				}
				if old, ok := found[e.ID]; ok {
					unlive(old)
				}
				found[e.ID] = r
				live(r)
			case recUpdate:
				e, err := parseMeta(payload)
				if err != nil {
					quarantine(fmt.Sprintf("%016x-%d.meta", seq, off), payload, err)
					return
				}
				if r, ok := found[e.ID]; ok {
					r.entry = e
				}
			case recRemove:
				if r, ok := found[string(payload)]; ok {
					unlive(r)
					delete(found, string(payload))
				}
			}
		})
		if err != nil {
			return nil, err
		}
		if seg.off == 0 {
			// Made ahead and never used: nothing in it, nothing depends on it.
			seg.f.Close()
			if err := os.Remove(seg.path); err != nil {
				s.log.Warn("spool cleanup failed", "file", seg.path, "err", err)
			}
			continue
		}
		s.segs = append(s.segs, seg)
	}
	// What was read may still be only in the page cache (a process killed, not a machine): make it
	// durable before anything is deleted because of it.
	for _, seg := range s.segs {
		if err := fdatasync(seg.f); err != nil {
			return nil, fmt.Errorf("fdatasync %s: %w", seg.path, err)
		}
	}
	bigs := map[string]bool{}
	out := make(map[string]Entry, len(found))
	var gone []string
	for id, r := range found {
		if r.loc.big {
			if _, err := os.Stat(s.bigPath(id)); err != nil {
				meta, _ := encodeMeta(&r.entry)
				quarantine(id+".json", meta, fmt.Errorf("body: %w", err))
				unlive(r)
				gone = append(gone, id)
				continue
			}
			bigs[id+".eml"] = true
		}
		s.locs[id] = r.loc
		out[id] = r.entry
	}
	des, err = os.ReadDir(s.bigDir)
	if err != nil {
		return nil, err
	}
	for _, de := range des {
		if !bigs[de.Name()] {
			// A big body whose commit never finished (the client never got its 250), or whose removal did.
			if err := os.Remove(filepath.Join(s.bigDir, de.Name())); err != nil {
				s.log.Warn("spool cleanup failed", "file", de.Name(), "err", err)
			}
		}
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	for _, id := range gone {
		if _, err := s.append(appendRecord(nil, recRemove, []byte(id)), 0, nil); err != nil {
			s.log.Warn("spool cleanup failed", "queue_id", id, "err", err) // quarantined again at next start
		}
	}
	s.reclaim()
	return out, nil
}

// parseCommit decodes a commit record's payload: the body's distance back, then the metadata.
func parseCommit(payload []byte) (Entry, error) {
	if len(payload) < 8 {
		return Entry{}, errors.New("commit record too short")
	}
	back := int64(binary.LittleEndian.Uint64(payload[:8]))
	if back < 0 || back > maxRecord+recHeader {
		return Entry{}, errors.New("commit record with a bad body offset")
	}
	return parseMeta(payload[8:])
}

// scanSegment reads one segment's records up to the first that is not whole and hands each to fn;
// body resolves a commit record's back offset to the body record before it.
func (s *spool) scanSegment(seq uint64, fn func(seg *segment, kind byte, off, next int64, payload []byte,
	body func(back int64) (id string, off, n int64, ok bool))) (*segment, error) {
	path := s.segPath(seq)
	f, err := openFile(path, syscall.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	seg := &segment{seq: seq, path: path, f: f, size: st.Size()}
	type bodyRec struct {
		id     string
		off, n int64
	}
	bodies := map[int64]bodyRec{} // by record offset
	var buf []byte
	off := int64(0)
	for {
		kind, payload, grown, next, err := readRecord(f, seg.size, off, buf)
		buf = grown
		if err != nil {
			if !errors.Is(err, errTorn) {
				s.log.Error("spool segment unreadable from here on", "file", path, "offset", off, "err", err)
			} else if !zeroFrom(f, off, seg.size) {
				s.log.Warn("spool segment ends in a torn or corrupt record", "file", path, "offset", off)
			}
			break
		}
		if kind == recBody {
			if len(payload) >= idLen {
				bodies[off] = bodyRec{id: string(payload[:idLen]), off: off + recHeader + idLen, n: int64(len(payload) - idLen)}
			}
		} else {
			fn(seg, kind, off, next, payload, func(back int64) (string, int64, int64, bool) {
				b, ok := bodies[off-back]
				return b.id, b.off, b.n, ok
			})
		}
		off = next
	}
	seg.off = off
	return seg, nil
}

// zeroFrom reports whether the segment holds only zeros from off (the unused end), as opposed to a torn
// or corrupt record worth a warning. It reads at most 64 KiB.
func zeroFrom(f *os.File, off, size int64) bool {
	b := make([]byte, min(size-off, 64<<10))
	n, _ := f.ReadAt(b, off)
	for _, c := range b[:n] {
		if c != 0 {
			return false
		}
	}
	return true
}

// writeQuarantine keeps data for an operator in quarantine/name (off the hot path: start-up only).
func (s *spool) writeQuarantine(name string, data []byte) error {
	return relay.WriteFileAtomic(filepath.Join(s.quarantineDir, name), 0o600, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}
