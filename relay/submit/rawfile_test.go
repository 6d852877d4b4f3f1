package submit

import (
	"bytes"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
)

// TestRawMessage: a message stays in memory up to rawInMemory and spills to a file beyond, and reads
// back the same either way, whatever the write and read sizes.
func TestRawMessage(t *testing.T) {
	var pool sync.Pool
	rng := rand.New(rand.NewPCG(5, 6))
	for _, size := range []int{0, 10, 64 << 10, rawInMemory, rawInMemory + 1, 3 * rawInMemory} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.IntN(256))
		}
		m := newRawMessage(t.TempDir(), &pool)
		for off := 0; off < size; {
			n := min(1+rng.IntN(40<<10), size-off)
			if w, err := m.Write(data[off : off+n]); err != nil || w != n {
				t.Fatalf("size %d: write %d: %d %v", size, n, w, err)
			}
			off += n
		}
		if spilled := m.f != nil; spilled != (size > rawInMemory) {
			t.Errorf("size %d: spilled to a file = %v", size, spilled)
		}
		got, err := io.ReadAll(io.NewSectionReader(m, 0, int64(size)))
		if err != nil || !bytes.Equal(got, data) {
			t.Errorf("size %d: read back %d bytes, %v", size, len(got), err)
		}
		for range 20 {
			if size == 0 {
				break
			}
			off := rng.IntN(size)
			p := make([]byte, rng.IntN(size-off+10))
			n, err := m.ReadAt(p, int64(off))
			if n != min(len(p), size-off) || !bytes.Equal(p[:n], data[off:off+n]) || (n < len(p) && err != io.EOF) {
				t.Errorf("size %d: ReadAt(%d, %d) = %d, %v", size, len(p), off, n, err)
			}
		}
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	}
}
