package compose

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// FormatFrom renders a From field value, `Display Name <address>`, correct for any display name:
//   - a name of atext words only is written as is (RFC 5322 §3.2.3 atom, §3.2.5 phrase);
//   - other ASCII names are a quoted-string with `"` and `\` escaped (RFC 5322 §3.2.4), so "@", ",",
//     "<" and the like are always inside quotes (Exchange Online rejects an unquoted "@");
//   - names with non-ASCII characters are RFC 2047 encoded-words; Q encoding when every ASCII character
//     is allowed in a phrase encoded-word (RFC 2047 §5(3): letters, digits, "!*+-/=_"), B encoding
//     otherwise.
//
// Control characters in the name are replaced by spaces (they have no business in a header).
func FormatFrom(displayName, address string) string {
	name := strings.Join(strings.Fields(sanitize(displayName)), " ")
	if name == "" {
		return "<" + address + ">"
	}
	return phrase(name) + " <" + address + ">"
}

func phrase(name string) string {
	if isASCII(name) && isAtomPhrase(name) {
		return name
	}
	if isASCII(name) {
		r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
		return `"` + r.Replace(name) + `"`
	}
	return encodePhrase(name)
}

// encodePhrase writes a display name as Q encoded-words safe in a phrase (RFC 2047 §5(3)): only
// letters, digits and "!*+-/" stay literal.
func encodePhrase(name string) string {
	return encodeWords(name, func(c byte) bool { return isPhraseQChar(c) && c != '=' && c != '_' }, 70)
}

// encodeWords writes s as Q encoded-words (RFC 2047 §4.2: a space is "_", bytes outside literal are
// =XX) of at most max characters (§2 allows 75). When s needs more than one, it is split after a space,
// so the space survives §6.2's rule that white space between adjacent encoded-words is ignored, or,
// inside a long word, at a rune boundary (§5: an encoded-word holds whole characters).
func encodeWords(s string, literal func(byte) bool, max int) string {
	const open, closing = "=?utf-8?q?", "?="
	var words []string
	var cur strings.Builder
	flush := func() {
		if cur.Len() > 0 {
			words = append(words, open+cur.String()+closing)
			cur.Reset()
		}
	}
	room := max - len(open) - len(closing)
	q := func(s string) string {
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			c := s[i]
			switch {
			case c == ' ':
				b.WriteByte('_')
			case c < utf8.RuneSelf && literal(c):
				b.WriteByte(c)
			default:
				fmt.Fprintf(&b, "=%02X", c)
			}
		}
		return b.String()
	}
	for _, w := range strings.SplitAfter(s, " ") {
		enc := q(w)
		if cur.Len()+len(enc) > room {
			flush()
		}
		if len(enc) <= room {
			cur.WriteString(enc)
			continue
		}
		for _, r := range w {
			e := q(string(r))
			if cur.Len()+len(e) > room {
				flush()
			}
			cur.WriteString(e)
		}
	}
	flush()
	return strings.Join(words, " ")
}

// isAtomPhrase reports whether s is a sequence of RFC 5322 atoms separated by single spaces.
func isAtomPhrase(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == ' ' {
			continue
		}
		if !isAtext(c) {
			return false
		}
	}
	return true
}

// isAtext is RFC 5322 §3.2.3 atext.
func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// isPhraseQChar is RFC 2047 §5(3): the characters a Q encoded-word in a phrase may hold unencoded.
func isPhraseQChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!*+-/=_", c) >= 0
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// sanitize replaces control characters (CR and LF included: header injection) and invalid UTF-8 with
// spaces.
func sanitize(s string) string {
	s = strings.ToValidUTF8(s, " ")
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// EncodeUnstructured renders an unstructured header value (Subject): ASCII as is, otherwise RFC 2047
// Q encoded-words (§5(1) allows any printable ASCII but "=", "?", "_" literally there), short enough
// that a folded "Subject:" line stays within 78 characters. An ASCII word too long for a header line is
// encoded too, so FoldHeader can always fold.
func EncodeUnstructured(v string) string {
	v = strings.Join(strings.Fields(sanitize(v)), " ")
	literal := func(c byte) bool { return c > ' ' && c <= '~' && c != '=' && c != '?' && c != '_' }
	// ASCII that looks like an encoded-word must be encoded too, or decoders would decode it.
	if !isASCII(v) || strings.Contains(v, "=?") {
		return encodeWords(v, literal, 66)
	}
	for _, w := range strings.Fields(v) {
		if len(w) > 66 {
			return encodeWords(v, literal, 66)
		}
	}
	return v
}

// FoldHeader renders "Name: value\r\n", folded at white space so no line exceeds 78 characters where
// the value allows it (RFC 5322 §2.2.3; encoded-words are at most 75 characters, RFC 2047 §2). The
// value must be ASCII without CR or LF.
func FoldHeader(name, value string) []byte {
	const limit = 78
	var b strings.Builder
	b.WriteString(name)
	b.WriteString(":")
	lineLen := b.Len()
	words := strings.Split(value, " ")
	for i, w := range words {
		if i > 0 && w == "" {
			continue
		}
		if lineLen+1+len(w) > limit && lineLen > len(name)+1 {
			b.WriteString("\r\n")
			lineLen = 0
		}
		b.WriteString(" ")
		b.WriteString(w)
		lineLen += 1 + len(w)
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}
