package graph

import (
	"bytes"
	"os"
	"testing"
	"time"
)

// FuzzSplit: splitting any message into a draft and attachments never panics, never leaves a
// temporary file behind, and keeps the message's header in the draft.
func FuzzSplit(f *testing.F) {
	f.Add([]byte("Subject: x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n" +
		"Content-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n"))
	f.Add([]byte("Subject: y\r\nContent-Type: multipart/related; boundary=\"r\"\r\n\r\n--r\r\nContent-Type: image/png\r\nContent-ID: <c>\r\n" +
		"Content-Transfer-Encoding: quoted-printable\r\n\r\n=89PNG\r\n--r--\r\n"))
	f.Add([]byte("Subject: z\r\n\r\nplain body\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		dir := t.TempDir()
		skeleton, atts, err := split(bytes.NewReader(msg), dir)
		if err == nil && len(msg) > 0 && len(skeleton) == 0 {
			t.Fatal("no skeleton without an error")
		}
		removeAll(atts)
		left, _ := os.ReadDir(dir)
		if len(left) != 0 {
			t.Fatalf("%d temporary files left", len(left))
		}
	})
}

// FuzzParseRetryAfter: any Retry-After value gives a duration that is never negative.
func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"17", "0", "-3", "Fri, 27 Nov 2026 22:00:00 GMT", "", "soon", "99999999999999999999", "9223372036854775807"} {
		f.Add(s)
	}
	now := time.Date(2026, 11, 27, 21, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		if d := parseRetryAfter(v, now); d < 0 {
			t.Fatalf("%q: %v", v, d)
		}
	})
}
