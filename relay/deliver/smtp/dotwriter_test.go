package smtp

import (
	"bufio"
	"bytes"
	"net/textproto"
	"testing"
)

// FuzzDotWriter: whatever the body and however it is cut into writes, dotWriter sends exactly the
// bytes net/textproto's DotWriter sends (the reference it replaces).
func FuzzDotWriter(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\n.hello\r\n..\r\nbare\nlf\rcr\r\r\n.\r\n"), uint8(3))
	f.Add([]byte(".\r\n"), uint8(1))
	f.Add([]byte("no end"), uint8(7))
	f.Add([]byte("ends in cr\r"), uint8(2))
	f.Add([]byte(""), uint8(1))
	f.Fuzz(func(t *testing.T, body []byte, cut uint8) {
		var want bytes.Buffer
		tw := textproto.NewWriter(bufio.NewWriter(&want))
		dw := tw.DotWriter()
		dw.Write(body)
		dw.Close()

		var got bytes.Buffer
		bw := bufio.NewWriter(&got)
		d := newDotWriter(bw)
		step := int(cut%16) + 1
		for off := 0; off < len(body); off += step {
			chunk := body[off:min(off+step, len(body))]
			if n, err := d.Write(chunk); n != len(chunk) || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("body %q in writes of %d:\n got %q\nwant %q", body, step, got.Bytes(), want.Bytes())
		}
	})
}
