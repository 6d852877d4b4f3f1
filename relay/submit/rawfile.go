package submit

import (
	"io"
	"os"
	"sync"
)

// namelessTemp creates a temporary file in dir and removes its name at once: the open file stays
// usable, and nothing is left behind whatever happens to the process.
func namelessTemp(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, "submit-*.eml") // mode 0600
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// rawInMemory is how much of a submitted message is kept in memory before it spills to a file: a
// typical reply (tens of KiB) never touches the disk before composition, so the only write of a message
// is the spool's; a 40 MB one costs at most this much memory.
const rawInMemory = 1 << 20

// rawMessage holds a submitted message between DATA and composition: in memory (a buffer recycled
// through pool) up to rawInMemory, in a nameless temporary file in dir beyond. It is written once, from
// the start, then read with positioned reads.
type rawMessage struct {
	dir  string
	pool *sync.Pool // of *[]byte
	bufp *[]byte
	f    *os.File // nil until the message outgrows memory
}

func newRawMessage(dir string, pool *sync.Pool) *rawMessage {
	bp, _ := pool.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, 0, 64<<10)
		bp = &b
	}
	*bp = (*bp)[:0]
	return &rawMessage{dir: dir, pool: pool, bufp: bp}
}

func (m *rawMessage) Write(p []byte) (int, error) {
	if m.f == nil && len(*m.bufp)+len(p) > rawInMemory {
		f, err := rawFile(m.dir)
		if err != nil {
			return 0, err
		}
		m.f = f
		if _, err := f.Write(*m.bufp); err != nil {
			return 0, err
		}
		m.release()
	}
	if m.f != nil {
		return m.f.Write(p)
	}
	*m.bufp = append(*m.bufp, p...)
	return len(p), nil
}

func (m *rawMessage) ReadAt(p []byte, off int64) (int, error) {
	if m.f != nil {
		return m.f.ReadAt(p, off)
	}
	b := *m.bufp
	if off >= int64(len(b)) {
		return 0, io.EOF
	}
	n := copy(p, b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *rawMessage) release() {
	if m.bufp != nil {
		if cap(*m.bufp) <= 2*rawInMemory {
			m.pool.Put(m.bufp)
		}
		m.bufp = nil
	}
}

// Close releases the buffer or the file.
func (m *rawMessage) Close() error {
	m.release()
	if m.f != nil {
		return m.f.Close()
	}
	return nil
}
