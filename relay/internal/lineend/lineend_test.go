package lineend

import (
	"bytes"
	"strings"
	"testing"
)

func TestIndex(t *testing.T) {
	long := strings.Repeat("x", 3*window+5)
	for _, s := range []string{"", "abc", "\r", "\n", "a\r\n", "a\nb\r", "\r\n", long, long + "\r", long + "\n", long + "\n\r",
		strings.Repeat("x", window-1) + "\r", strings.Repeat("x", window) + "\n"} {
		if got, want := Index([]byte(s)), bytes.IndexAny([]byte(s), "\r\n"); got != want {
			t.Errorf("Index(%.20q… len %d) = %d, want %d", s, len(s), got, want)
		}
	}
}

// FuzzIndex: Index agrees with bytes.IndexAny(b, "\r\n") on any input.
func FuzzIndex(f *testing.F) {
	f.Add([]byte("line\r\nnext"))
	f.Add([]byte(strings.Repeat("a\r", 300)))
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := Index(b), bytes.IndexAny(b, "\r\n"); got != want {
			t.Fatalf("Index(%q) = %d, want %d", b, got, want)
		}
	})
}

func BenchmarkIndexLines(b *testing.B) {
	text := []byte(strings.Repeat(strings.Repeat("x", 76)+"\r\n", 128))
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		for p := text; ; {
			i := Index(p)
			if i < 0 {
				break
			}
			p = p[i+1:]
		}
	}
}

func BenchmarkIndexAnyLines(b *testing.B) {
	text := []byte(strings.Repeat(strings.Repeat("x", 76)+"\r\n", 128))
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		for p := text; ; {
			i := bytes.IndexAny(p, "\r\n")
			if i < 0 {
				break
			}
			p = p[i+1:]
		}
	}
}
