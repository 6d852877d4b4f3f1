package main

import (
	"io"
	"testing"
)

// FuzzPrintReadable: the readable preview never panics, whatever MIME structure it is handed (a
// custom template can produce odd parts; nested multiparts, bad encodings, missing boundaries).
func FuzzPrintReadable(f *testing.F) {
	f.Add([]byte("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nHello =3D world\r\n"))
	f.Add([]byte("Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nPGI+aGk8L2I+\r\n--b--\r\n"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Disposition: attachment; filename=a.pdf\r\n\r\nJVBERi0=\r\n--x--\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		_ = printReadable(io.Discard, msg)
	})
}
