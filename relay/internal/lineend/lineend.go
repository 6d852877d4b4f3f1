// Package lineend finds the next CR or LF in message bytes, the one scan that mailgate's DATA checks
// (relay/submit) and dot-stuffing (relay/deliver/smtp) make over every byte of every message.
//
// bytes.IndexAny(b, "\r\n") tests one byte at a time; Index instead makes two vectorised single-byte
// scans (bytes.IndexByte) over a bounded window: on CRLF text the LF scan finds the line end and the
// CR scan then covers that line only. The window bounds the cost on text with few line ends and many
// CRs (each call scans at most window bytes beyond what it returns), so callers that call Index again
// after each hit stay linear.
package lineend

import "bytes"

// window is a little over a typical mail line (RFC 5322 §2.1.1 recommends 78 characters).
const window = 256

// Index returns the index of the first CR or LF in b, or -1 when there is none: the same answer as
// bytes.IndexAny(b, "\r\n").
func Index(b []byte) int {
	for off := 0; off < len(b); off += window {
		w := b[off:min(off+window, len(b))]
		lf := bytes.IndexByte(w, '\n')
		if lf >= 0 {
			w = w[:lf]
		}
		if cr := bytes.IndexByte(w, '\r'); cr >= 0 {
			return off + cr
		}
		if lf >= 0 {
			return off + lf
		}
	}
	return -1
}
