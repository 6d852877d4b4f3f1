package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
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
	// Held: an operator put the message on hold (mailgate queue hold); it is not attempted, and keeps
	// its place, until released.
	Held bool `json:"held,omitempty"`
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
