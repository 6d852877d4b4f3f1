package smtp

// mailgate's own tests of its changes to go-smtp (see MAILGATE.md); upstream's tests are not kept.

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// byteLineLimit is upstream's lineLimitReader count, one byte at a time: the model for the patched one.
// It reports how many bytes of in pass before ErrTooLongLine, or len(in) when none is too long.
func byteLineLimit(in []byte, limit int) int {
	cur := 0
	for i, c := range in {
		if c == '\n' {
			cur = 0
		}
		cur++
		if cur > limit {
			return i
		}
	}
	return len(in)
}

// FuzzLineLimitReader: read in pieces of any size, the patched reader refuses exactly the inputs the
// byte-at-a-time count refuses, and passes everything before the piece that holds the offending byte.
func FuzzLineLimitReader(f *testing.F) {
	f.Add([]byte("abc\r\ndefgh\r\n"), 5, 3)
	f.Add([]byte("abcd\nabcd\n"), 4, 1)
	f.Add([]byte("\n\n\n"), 1, 2)
	f.Add(bytes.Repeat([]byte("x"), 2000), 1000, 7)
	f.Fuzz(func(t *testing.T, in []byte, limit, piece int) {
		if limit < 1 || limit > 1<<20 || piece < 1 || piece > 1<<16 {
			return
		}
		ok := byteLineLimit(in, limit) == len(in)
		r := &lineLimitReader{R: iotest.HalfReader(bytes.NewReader(in)), LineLimit: limit}
		var got []byte
		buf := make([]byte, piece)
		var err error
		for {
			var n int
			n, err = r.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
		}
		switch {
		case ok && !errors.Is(err, io.EOF):
			t.Fatalf("limit %d: %q refused (%v), the byte count accepts it", limit, in, err)
		case !ok && !errors.Is(err, ErrTooLongLine):
			t.Fatalf("limit %d: %q passed, the byte count refuses it at %d", limit, in, byteLineLimit(in, limit))
		case ok && !bytes.Equal(got, in):
			t.Fatalf("limit %d: %q came out as %q", limit, in, got)
		case !ok && len(got) > byteLineLimit(in, limit):
			t.Fatalf("limit %d: %d bytes passed, the offending byte is at %d", limit, len(got), byteLineLimit(in, limit))
		}
	})
}
