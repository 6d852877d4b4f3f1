package submit

import (
	"bytes"

	"github.com/mailgate/mailgate/relay/internal/lineend"
)

// lineGuard checks a message stream for bare CR and bare LF: RFC 5321 §2.3.8 allows CR and LF only as the
// CRLF pair that ends a line, and the SMTP smuggling attacks (CVE-2023-51764/51765/51766) rely on
// servers that accept "\n.\r\n", "\r\n.\n" or "\r.\r\n" as the end of data while a next hop does not.
// go-smtp ends DATA only at "\r\n.\r\n" but passes bare CR/LF through, and a composed message relayed
// upstream could then be split differently; refusing them closes the door at the entrance. BDAT chunks
// (RFC 3030) carry raw bytes and are checked the same way.
//
// It also refuses NUL (RFC 5322 §2.3 and RFC 5321 §4.1.1.4 exclude it from message text; many
// receivers truncate at it, so what was checked and what is shown could differ).
//
// go-smtp's DATA reader used to drop the CR of a line starting with ".\r" that is not the end of data
// (".\rX" arrived as "X"), so this guard never saw that bare CR; mailgate builds with a go-smtp whose
// reader keeps it (see go.mod's replace and relay/internal/gosmtp/MAILGATE.md).
//
// The guard is fed the stream in arbitrary pieces and keeps the state of a CR at the end of a piece.
type lineGuard struct {
	pendingCR bool // the previous byte was a CR, so the next must be LF
	bad       bool
	nul       bool // a NUL byte was seen (bad is set too)
}

// check scans p. Once the stream is bad it stays bad and further input is not scanned.
func (g *lineGuard) check(p []byte) {
	if !g.bad && bytes.IndexByte(p, 0) >= 0 {
		g.bad, g.nul = true, true
		return
	}
	i := 0
	for !g.bad && i < len(p) {
		if g.pendingCR {
			if p[i] != '\n' {
				g.bad = true
				return
			}
			g.pendingCR = false
			i++
			continue
		}
		j := lineend.Index(p[i:])
		if j < 0 {
			return
		}
		i += j
		if p[i] == '\n' {
			g.bad = true
			return
		}
		g.pendingCR = true
		i++
	}
}

// ok reports whether the whole stream seen so far is clean; a CR as the very last byte is bare.
func (g *lineGuard) ok() bool { return !g.bad && !g.pendingCR }
