package compose

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"mime"
	"mime/quotedprintable"
	"sort"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"github.com/mailgate/mailgate/relay"
)

// rawAttachments walks a message with the byte-preserving textproto layer and returns, for every leaf
// part that composition must pass through untouched (a named part, or one marked as an attachment),
// the sha256 of its raw header and body bytes.
func rawAttachments(msg []byte) ([]string, error) {
	br := bufio.NewReader(bytes.NewReader(msg))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return nil, err
	}
	var out []string
	var walk func(h *textproto.Header, body io.Reader, depth int, top bool) error
	walk = func(h *textproto.Header, body io.Reader, depth int, top bool) error {
		if depth > 20 {
			return nil
		}
		mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
		if err != nil {
			mt, params = "text/plain", nil
		}
		if strings.HasPrefix(mt, "multipart/") && params["boundary"] != "" {
			mr := textproto.NewMultipartReader(body, params["boundary"])
			for {
				p, err := mr.NextPart()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
				if err := walk(&p.Header, p, depth+1, false); err != nil {
					return err
				}
			}
		}
		disp, dp, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
		if top || (disp != "attachment" && dp["filename"] == "" && params["name"] == "") {
			return nil
		}
		s := sha256.New()
		if err := textproto.WriteHeader(s, *h); err != nil {
			return err
		}
		if _, err := io.Copy(s, body); err != nil {
			return err
		}
		out = append(out, hex.EncodeToString(s.Sum(nil)))
		return nil
	}
	err = walk(&h, br, 0, true)
	sort.Strings(out)
	return out, err
}

// FuzzCompose: composition never panics; it either refuses with a *relay.Error or produces a message
// that go-message parses completely, whose attachments are byte-identical to the input's.
func FuzzCompose(f *testing.F) {
	for _, c := range goldenCases() {
		f.Add([]byte(c.input), uint8(0))
	}
	f.Add([]byte(mixedWith("Content-Type: message/rfc822\r\n", "From: a@b\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n")), uint8(1))
	f.Add([]byte("Subject: x\r\n\r\n"), uint8(2))
	f.Fuzz(func(t *testing.T, in []byte, variant uint8) {
		ch := channel(fuzzFormats[int(variant)%len(fuzzFormats)], nil)(t)
		if variant&1 == 1 {
			ch.Template = brandTemplateWithText(t)
		}
		if variant&2 == 2 {
			ch.AllowedExtensions = []string{".png", ".pdf", ".txt"}
		}
		agent := noSignature(t)
		if variant&4 == 4 {
			agent = withJane(t)
		}
		var out bytes.Buffer
		_, err := New(Options{Rand: seeded(1), MaxBodyBytes: 1 << 20}).Compose(context.Background(), bytes.NewReader(in), &out,
			Request{Channel: ch, Agent: agent, Now: fixedNow})
		if err != nil {
			if _, ok := relay.AsError(err); !ok {
				t.Fatalf("error is not a *relay.Error: %v", err)
			}
			return
		}
		m, err := message.Read(bytes.NewReader(out.Bytes()))
		if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
			t.Fatalf("output does not parse: %v\n%q", err, out.String())
		}
		if err := m.Walk(func(path []int, e *message.Entity, err error) error {
			if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
				return err
			}
			if mt, _, _ := e.Header.ContentType(); strings.HasPrefix(mt, "multipart/") {
				return nil // Walk reads the parts itself
			}
			_, err = io.Copy(io.Discard, e.Body)
			return err
		}); err != nil {
			// Parts passed through may be broken as they were in the input; only a walk failure
			// that the input does not have is composition's fault.
			if _, werr := walkAll(in); werr == nil {
				t.Fatalf("output walk failed though the input walks: %v\n%q", err, out.String())
			}
		}
		want, err := rawAttachments(in)
		if err != nil {
			return // the input's structure is not walkable; composition was lenient
		}
		got, err := rawAttachments(out.Bytes())
		if err != nil {
			t.Fatalf("output structure: %v", err)
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("attachments changed: %v -> %v\nin %q\nout %q", want, got, in, out.String())
		}
	})
}

func walkAll(msg []byte) (int, error) {
	m, err := message.Read(bytes.NewReader(msg))
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return 0, err
	}
	n := 0
	err = m.Walk(func(path []int, e *message.Entity, err error) error {
		if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
			return err
		}
		n++
		if mt, _, _ := e.Header.ContentType(); strings.HasPrefix(mt, "multipart/") {
			return nil
		}
		_, err = io.Copy(io.Discard, e.Body)
		return err
	})
	return n, err
}

// FuzzEncodeQP: the quoted-printable encoder round-trips through the standard decoder, keeps lines
// within 76 characters, and never starts a line with "-" or "." (boundary and dot safety).
func FuzzEncodeQP(f *testing.F) {
	for _, s := range []string{"--mix\n--mix--\n", ".\n", "a=b\tc \n", strings.Repeat("é", 80), strings.Repeat("-", 200)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		s = strings.ReplaceAll(s, "\r\n", "\n")
		enc := encodeQP(s)
		for _, line := range strings.Split(strings.TrimSuffix(string(enc), "\r\n"), "\r\n") {
			if len(line) > 76 {
				t.Fatalf("line of %d: %q", len(line), line)
			}
			if strings.HasPrefix(line, "-") || strings.HasPrefix(line, ".") {
				t.Fatalf("line starts with %q: %q", line[:1], line)
			}
		}
		dec, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(enc)))
		if err != nil {
			t.Fatalf("%q: %v", enc, err)
		}
		want := s
		if !strings.HasSuffix(want, "\n") {
			want += "\n"
		}
		if string(dec) != strings.ReplaceAll(want, "\n", "\r\n") {
			t.Fatalf("round trip %q -> %q -> %q", s, enc, dec)
		}
	})
}

// FuzzReadLF: readLF is strings.ReplaceAll(s, "\r\n", "\n") whatever the sizes of the reads (a CRLF
// split across two reads included), and counts every byte it read.
func FuzzReadLF(f *testing.F) {
	for _, s := range []string{"a\r\nb", "\r", "\r\r\n", "x\r", "\n\r\n\r"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := strings.ReplaceAll(s, "\r\n", "\n")
		for _, r := range []io.Reader{strings.NewReader(s), iotest.OneByteReader(strings.NewReader(s)), iotest.HalfReader(strings.NewReader(s))} {
			got, n, err := readLF(r)
			if err != nil || got != want || n != int64(len(s)) {
				t.Fatalf("readLF(%q) = %q, %d, %v; want %q, %d", s, got, n, err, want, len(s))
			}
		}
	})
}
