package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// RecipientStatus is where one recipient of a queued message stands.
type RecipientStatus string

// The three recipient states. Delivered and Bounced are final.
const (
	Pending   RecipientStatus = "pending"
	Delivered RecipientStatus = "delivered"
	Bounced   RecipientStatus = "bounced"
)

// Recipient is one envelope recipient and its delivery status. For a bounced recipient Code, Enhanced,
// Diagnostic, Fault and Reason say why (what the bounce store records); for a delivered one Diagnostic
// holds the upstream's reply.
type Recipient struct {
	Address    string             `json:"address"`
	Status     RecipientStatus    `json:"status"`
	Code       int                `json:"code,omitempty"`
	Enhanced   relay.EnhancedCode `json:"enhanced,omitempty"`
	Diagnostic string             `json:"diagnostic,omitempty"`
	Fault      string             `json:"fault,omitempty"`  // relay.Fault name of a bounce
	Reason     string             `json:"reason,omitempty"` // the bounce's metrics reason
	// Unrecorded marks a bounce the bounce store has not taken yet (it was unavailable): the entry
	// stays queued, and the record is retried with the delivery backoff, so that an address that must
	// be suppressed is not forgotten because the store had a bad moment.
	Unrecorded bool      `json:"unrecorded,omitempty"`
	Time       time.Time `json:"time,omitzero"` // when the status became final
}

// Entry is one queued message as the operator API shows it and as its metadata file stores it.
type Entry struct {
	ID          string         `json:"id"`
	Envelope    relay.Envelope `json:"envelope"`
	Size        int64          `json:"size"`
	Created     time.Time      `json:"created"` // commit time; the queue lifetime counts from here
	Recipients  []Recipient    `json:"recipients"`
	Attempts    int            `json:"attempts"`
	NextAttempt time.Time      `json:"next_attempt"`
	FirstError  string         `json:"first_error,omitempty"`
	LastError   string         `json:"last_error,omitempty"`
	LastReply   string         `json:"last_reply,omitempty"`
}

// done reports whether nothing is left to do for the entry: every recipient final, every bounce
// recorded in the bounce store.
func (e *Entry) done() bool {
	for _, r := range e.Recipients {
		if r.Status == Pending || r.Unrecorded {
			return false
		}
	}
	return true
}

// Pending returns the addresses still to deliver.
func (e *Entry) Pending() []string {
	var out []string
	for _, r := range e.Recipients {
		if r.Status == Pending {
			out = append(out, r.Address)
		}
	}
	return out
}

func (e *Entry) clone() Entry {
	c := *e
	c.Recipients = append([]Recipient(nil), e.Recipients...)
	c.Envelope.Recipients = append([]string(nil), e.Envelope.Recipients...)
	return c
}

// metaVersion is the metadata format version; a file with another version is quarantined rather than
// misread.
const metaVersion = 1

type metaFile struct {
	Version int `json:"version"`
	Entry
}

func encodeMeta(e *Entry) ([]byte, error) {
	return json.Marshal(metaFile{Version: metaVersion, Entry: *e})
}

// parseMeta decodes and validates a metadata file. It is the only parser of spool data: anything it
// refuses is quarantined, so it must never panic and never accept an entry the scheduler cannot handle.
func parseMeta(data []byte) (Entry, error) {
	var m metaFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Entry{}, fmt.Errorf("decode metadata: %w", err)
	}
	if dec.More() {
		return Entry{}, errors.New("trailing data after metadata")
	}
	if m.Version != metaVersion {
		return Entry{}, fmt.Errorf("metadata version %d, want %d", m.Version, metaVersion)
	}
	e := m.Entry
	if !validID(e.ID) {
		return Entry{}, fmt.Errorf("invalid queue id %q", e.ID)
	}
	if len(e.Recipients) == 0 {
		return Entry{}, errors.New("no recipients")
	}
	for i, r := range e.Recipients {
		switch r.Status {
		case Pending, Delivered, Bounced:
		default:
			return Entry{}, fmt.Errorf("recipient %d: unknown status %q", i, r.Status)
		}
		if r.Address == "" {
			return Entry{}, fmt.Errorf("recipient %d: empty address", i)
		}
	}
	if e.Size < 0 || e.Attempts < 0 {
		return Entry{}, errors.New("negative size or attempt count")
	}
	if e.Envelope.Transport == "" {
		return Entry{}, errors.New("no transport")
	}
	return e, nil
}

// idAlphabet is base32 in ASCII order, so ids compare like the numbers they encode.
const idAlphabet = "0123456789abcdefghijklmnopqrstuv"

const idLen = 17

func validID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'v') {
			return false
		}
	}
	return true
}

// idSource makes queue ids: time in nanoseconds (strictly increasing within the process, so ids made
// in the same nanosecond still sort in creation order) followed by 20 random bits.
type idSource struct {
	mu   sync.Mutex
	last int64
}

func (s *idSource) next() string {
	s.mu.Lock()
	n := time.Now().UnixNano()
	if n <= s.last {
		n = s.last + 1
	}
	s.last = n
	s.mu.Unlock()
	var b [idLen]byte
	u := uint64(n)
	for i := 12; i >= 0; i-- {
		b[i] = idAlphabet[u&31]
		u >>= 5
	}
	r := rand.Uint32()
	for i := idLen - 1; i >= 13; i-- {
		b[i] = idAlphabet[r&31]
		r >>= 5
	}
	return string(b[:])
}

// dirSyncer coalesces fsyncs of one directory: Sync returns once an fsync that started after the call
// has finished, so concurrent callers share one. A failed fsync is sticky (see the package doc).
type dirSyncer struct {
	path string
	mu   sync.Mutex
	cond *sync.Cond
	// started counts fsyncs begun, done the last one finished; running is true while one is in flight.
	started, done uint64
	running       bool
	err           error
	fd            *os.File // the directory, opened by the first fsync
}

func newDirSyncer(path string) *dirSyncer {
	s := &dirSyncer{path: path}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *dirSyncer) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// An fsync already running may have started before our renames: we need the one after it.
	target := s.started + 1
	for s.done < target && s.err == nil {
		if s.running {
			s.cond.Wait()
			continue
		}
		s.running = true
		s.started++
		n := s.started
		s.mu.Unlock()
		err := s.syncDir() // only one runs at a time: s.fd needs no lock of its own
		s.mu.Lock()
		s.running = false
		s.done = n
		if err != nil {
			s.err = fmt.Errorf("fsync %s: %w", s.path, err)
		}
		s.cond.Broadcast()
	}
	return s.err
}

// close releases the directory descriptor (the Queue is closed; no Sync runs any more).
func (s *dirSyncer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.running {
		s.cond.Wait()
	}
	if s.fd != nil {
		s.fd.Close()
		s.fd = nil
	}
}

// syncDir fsyncs the directory, through a descriptor kept open across calls (one open per process
// instead of one per commit).
func (s *dirSyncer) syncDir() error {
	if s.fd == nil {
		d, err := openFile(s.path, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
		if err != nil {
			return err
		}
		s.fd = d
	}
	return s.fd.Sync()
}

// syncDir fsyncs a directory once (start-up, quarantine: off the hot path).
func syncDir(path string) error {
	d, err := openFile(path, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// openFile is os.OpenFile for the spool's files without the runtime poller: os.OpenFile offers every
// file to epoll (which refuses regular files) and toggles O_NONBLOCK around it, four or five wasted
// system calls per open, several opens per message.
func openFile(path string, flag int, perm uint32) (*os.File, error) {
	fd, err := syscall.Open(path, flag|syscall.O_CLOEXEC, perm)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// writeFileSync writes data to path, fsyncs and closes it.
func writeFileSync(path string, data []byte) error {
	f, err := openFile(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// spool is the directory layout; all file operations of the queue go through it.
type spool struct {
	dir, tmp, msg, quarantine string
	msgSync                   *dirSyncer
}

func newSpool(dir string) (*spool, error) {
	s := &spool{
		dir:        dir,
		tmp:        filepath.Join(dir, "tmp"),
		msg:        filepath.Join(dir, "msg"),
		quarantine: filepath.Join(dir, "quarantine"),
	}
	for _, d := range []string{s.dir, s.tmp, s.msg, s.quarantine} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	// The three subdirectories must themselves survive a power cut before anything is put in them.
	if err := syncDir(s.dir); err != nil {
		return nil, err
	}
	s.msgSync = newDirSyncer(s.msg)
	return s, nil
}

func (s *spool) tmpMeta(id string) string { return filepath.Join(s.tmp, id+".json") }
func (s *spool) body(id string) string    { return filepath.Join(s.msg, id+".eml") }
func (s *spool) meta(id string) string    { return filepath.Join(s.msg, id+".json") }

// replaceMeta writes e's metadata over the previous version without waiting for a directory fsync:
// after a crash either version is found, both valid — the older one only repeats an attempt
// (at-least-once), never loses a recipient. The next commit's directory fsync makes it durable anyway.
func (s *spool) replaceMeta(e *Entry) error {
	if err := s.writeTmpMeta(e); err != nil {
		return err
	}
	return s.renameMeta(e.ID)
}

// writeTmpMeta writes e's metadata to tmp/<id>.json and fsyncs it.
func (s *spool) writeTmpMeta(e *Entry) error {
	data, err := encodeMeta(e)
	if err != nil {
		return err
	}
	return writeFileSync(s.tmpMeta(e.ID), data)
}

// publishMeta makes a new entry exist and durable: rename its metadata into msg/, fsync msg/.
func (s *spool) publishMeta(id string) error {
	if err := s.renameMeta(id); err != nil {
		return err
	}
	return s.msgSync.Sync()
}

// renameMeta moves tmp/<id>.json over msg/<id>.json. syscall.Rename: os.Rename first stats the target
// to refuse directories, a wasted call here.
func (s *spool) renameMeta(id string) error {
	if err := syscall.Rename(s.tmpMeta(id), s.meta(id)); err != nil {
		return &os.LinkError{Op: "rename", Old: s.tmpMeta(id), New: s.meta(id), Err: err}
	}
	return nil
}

// remove deletes an entry durably: metadata first (the entry ends there), then the body.
func (s *spool) remove(id string) error {
	if err := os.Remove(s.meta(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Remove(s.body(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// No directory fsync: an entry whose removal is lost in a crash is delivered again (at-least-once,
	// as every MTA), and nobody waits on the shared fsync for it; the next commit's fsync persists it.
	return nil
}

// moveToQuarantine moves whatever exists of an entry to quarantine/ and makes both directories durable.
func (s *spool) moveToQuarantine(name string) error {
	base := name[:len(name)-len(filepath.Ext(name))]
	var firstErr error
	for _, ext := range []string{".json", ".eml"} {
		err := os.Rename(filepath.Join(s.msg, base+ext), filepath.Join(s.quarantine, base+ext))
		if err != nil && !errors.Is(err, os.ErrNotExist) && firstErr == nil {
			firstErr = err
		}
	}
	if err := syncDir(s.quarantine); err != nil && firstErr == nil {
		firstErr = err
	}
	if err := syncDir(s.msg); err != nil && firstErr == nil {
		firstErr = err
	}
	return firstErr
}
