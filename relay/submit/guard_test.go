package submit

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"

	"github.com/mailgate/mailgate/relay"
)

// cleanLineEndings is the reference: every CR is immediately followed by LF and every LF immediately
// preceded by CR.
func cleanLineEndings(b []byte) bool {
	for i, c := range b {
		switch c {
		case '\r':
			if i+1 >= len(b) || b[i+1] != '\n' {
				return false
			}
		case '\n':
			if i == 0 || b[i-1] != '\r' {
				return false
			}
		}
	}
	return true
}

func TestLineGuard(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"", true},
		{"no line end", true},
		{"a\r\nb\r\n", true},
		{"\r\n\r\n", true},
		{"a\nb", false},
		{"a\rb", false},
		{"a\r", false},
		{"\n", false},
		{"a\r\r\n", false},
		{"a\r\n\n", false},
		{"first\n.\r\n", false},
		{"first\r\n.\n", false},
		{"first\r.\r\n", false},
	} {
		// Every split point: the state must carry across pieces.
		for cut := 0; cut <= len(tc.in); cut++ {
			var g lineGuard
			g.check([]byte(tc.in[:cut]))
			g.check([]byte(tc.in[cut:]))
			if g.ok() != tc.want {
				t.Errorf("%q split at %d: ok=%v, want %v", tc.in, cut, g.ok(), tc.want)
			}
		}
	}
}

func FuzzLineGuard(f *testing.F) {
	f.Add([]byte("a\r\nb\r\n"), uint8(3))
	f.Add([]byte("first\n.\r\nsmuggled\r\n"), uint8(6))
	f.Add([]byte("x\r"), uint8(1))
	f.Add([]byte("\r\n.\r"), uint8(0))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		var g lineGuard
		n := int(step%17) + 1
		for i := 0; i < len(data); i += n {
			g.check(data[i:min(i+n, len(data))])
		}
		// The guard refuses NUL too (RFC 5322 §2.3), which the line-ending reference does not look at.
		if got, want := g.ok(), cleanLineEndings(data) && bytes.IndexByte(data, 0) < 0; got != want {
			t.Fatalf("guard says %v, reference %v for %q", got, want, data)
		}
	})
}

func BenchmarkLineGuard(b *testing.B) {
	data := bytes.Repeat([]byte(strings.Repeat("x", 76)+"\r\n"), 1<<14) // ~1.3 MB of 78-char lines
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		var g lineGuard
		g.check(data)
		if !g.ok() {
			b.Fatal("clean data refused")
		}
	}
}

func FuzzFromAddress(f *testing.F) {
	for _, s := range []string{
		"From: Example Support <support@example.com>\r\n\r\n",
		"From: =?iso-8859-15?q?S=E9rvice?= <support@example.com>\r\n\r\n",
		"From: a@example.com, b@example.com\r\n\r\n",
		"From: a@example.com\r\nFrom: b@example.com\r\n\r\n",
		"From: \"quoted, name\" <Support@Example.COM>\r\n\r\n",
		"From:\r\n folded@example.com\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		h, err := textproto.ReadHeader(bufio.NewReader(strings.NewReader(raw)))
		if err != nil {
			return
		}
		addr, err := fromAddress(h)
		if err != nil {
			if _, ok := relay.AsError(err); !ok {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if addr != strings.ToLower(addr) || !strings.Contains(addr, "@") {
			t.Fatalf("address %q", addr)
		}
	})
}
