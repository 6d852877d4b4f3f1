package submit

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/emersion/go-smtp"
)

// dataBackend records what go-smtp's DATA reader hands a backend, read in pieces of readSize bytes.
type dataBackend struct {
	readSize int
	got      chan []byte
}

func (b *dataBackend) NewSession(*smtp.Conn) (smtp.Session, error) { return dataSession{b}, nil }

type dataSession struct{ b *dataBackend }

func (dataSession) Mail(string, *smtp.MailOptions) error { return nil }
func (dataSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (dataSession) Reset()                               {}
func (dataSession) Logout() error                        { return nil }
func (s dataSession) Data(r io.Reader) error {
	if s.b.readSize == 1 {
		r = iotest.OneByteReader(r)
	}
	var out bytes.Buffer
	buf := make([]byte, max(1, s.b.readSize))
	_, err := io.CopyBuffer(&out, struct{ io.Reader }{r}, buf)
	s.b.got <- out.Bytes()
	return err
}

// readData sends DATA with body (which must not contain an end-of-data line) through go-smtp's server
// over an in-memory connection and returns what the backend read. The data ends with an empty line
// before the final ".": go-smtp's reader takes "\r\r\n" for no line end at all, so a body ending in
// CR would otherwise swallow the end of data.
func readData(t testing.TB, body []byte, readSize int) []byte {
	t.Helper()
	b := &dataBackend{readSize: readSize, got: make(chan []byte, 1)}
	srv := smtp.NewServer(b)
	srv.Domain = "test"
	srv.MaxLineLength = 0 // a fuzzed body may have lines of any length
	srv.ErrorLog = log.New(io.Discard, "", 0)
	client, server := net.Pipe()
	defer client.Close()
	ln := &oneConnListener{c: server, done: make(chan struct{})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))

	r := bufio.NewReader(client)
	go func() {
		fmt.Fprintf(client, "HELO t\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
		_, _ = client.Write(body)
		_, _ = client.Write([]byte("\r\n\r\n.\r\nQUIT\r\n"))
	}()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading replies: %v", err)
		}
		if strings.HasPrefix(line, "354") {
			break
		}
	}
	select {
	case got := <-b.got:
		_, _ = io.Copy(io.Discard, r)
		return got
	case <-time.After(10 * time.Second):
		t.Fatal("no DATA received")
		return nil
	}
}

// oneConnListener hands out one connection, then blocks until closed.
type oneConnListener struct {
	c    net.Conn
	done chan struct{}
	used bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.used {
		l.used = true
		return l.c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}
func (l *oneConnListener) Close() error {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}
func (l *oneConnListener) Addr() net.Addr { return &net.TCPAddr{} }

// The patched go-smtp (relay/internal/gosmtp) keeps the CR of a ".\r" line that does not end the
// data, whatever the size of the backend's reads; upstream dropped it with the dot.
func TestDotCRKeepsCR(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a\r\n.\rX\r\nb", "a\r\n\rX\r\nb"},
		{".\rX", "\rX"},
		{"a\r\n.\r\r\nb", "a\r\n\r\r\nb"},
		{"a\r\n..b\r\n.\r", "a\r\n.b\r\n\r"},
		{"a\r\n.b", "a\r\nb"}, // dot-stuffing as before
	} {
		for _, size := range []int{1, 2, 3, 32 << 10} {
			if got := readData(t, []byte(tc.in), size); string(got) != tc.want+"\r\n\r\n" {
				t.Errorf("%q read %d at a time: got %q, want %q", tc.in, size, got, tc.want+"\r\n\r\n")
			}
		}
	}
}

// FuzzDataReader: whatever the body, no CR is lost on the way to the backend (so lineGuard sees every
// bare CR), and the backend's read size does not change what it gets.
func FuzzDataReader(f *testing.F) {
	for _, s := range []string{"a\r\n.\rX", ".\r.\r\n", "x\r\n.\r\r\r\n", "\r\r\n..\r"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if bytes.Contains(body, []byte("\r\n.\r\n")) || bytes.HasPrefix(body, []byte(".\r\n")) ||
			bytes.HasSuffix(body, []byte("\r\n.")) || bytes.Equal(body, []byte(".")) || len(body) > 4096 {
			return // would end the data early
		}
		whole := readData(t, body, 32<<10)
		if want := byteMachine(body); !bytes.Equal(whole, want) {
			t.Fatalf("body %q: reader gave %q, the byte-at-a-time machine %q", body, whole, want)
		}
		if bytes.Count(whole, []byte("\r")) != bytes.Count(body, []byte("\r"))+2 { // + the two CRLF before "."
			t.Fatalf("CRs: body %q became %q", body, whole)
		}
		if bytewise := readData(t, body, 1); !bytes.Equal(bytewise, whole) {
			t.Fatalf("read size changes the data: %q vs %q", bytewise, whole)
		}
	})
}

// byteMachine is the DATA decoder as go-smtp wrote it, one byte at a time (with mailgate's ".\r" fix),
// followed by the end of data readData sends: the model the patched reader's bulk copy must match.
func byteMachine(body []byte) []byte {
	const (
		beginLine = iota
		dot
		dotCR
		cr
		data
	)
	in := append(append([]byte{}, body...), "\r\n\r\n.\r\n"...)
	var out []byte
	state := beginLine
	for _, c := range in {
		switch state {
		case beginLine:
			switch c {
			case '.':
				state = dot
				continue
			case '\r':
				state = cr
			default:
				state = data
			}
		case dot:
			if c == '\r' {
				state = dotCR
				continue
			}
			state = data
		case dotCR:
			if c == '\n' {
				return out
			}
			out = append(out, '\r')
			state = data
		case cr:
			if c == '\n' {
				state = beginLine
			} else {
				state = data
			}
		case data:
			if c == '\r' {
				state = cr
			}
		}
		out = append(out, c)
	}
	return out
}

// TestDataReaderBulk: long lines, lines that are nothing but CRs, and stuffed dots, read in pieces of
// every size from one byte to the whole, come out as the byte-at-a-time machine decodes them.
func TestDataReaderBulk(t *testing.T) {
	body := []byte("a\r\n" + strings.Repeat("x", 5000) + "\r\n..stuffed\r\n\r\r\r\n.\rX\r\n" + strings.Repeat("y\r\n", 300) + "end")
	want := byteMachine(body)
	for _, size := range []int{1, 2, 3, 7, 64, 4095, 4096, 32 << 10} {
		if got := readData(t, body, size); !bytes.Equal(got, want) {
			t.Errorf("read %d at a time: got %d bytes, want %d (first difference at %d)", size, len(got), len(want), firstDiff(got, want))
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
