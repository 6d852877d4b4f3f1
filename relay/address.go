package relay

import "strings"

// ValidAddress reports whether s is a mailbox mailgate will relay to or send from: local-part "@" domain
// (RFC 5321 §4.1.2) with a dot-atom or quoted-string local part of at most 64 octets (§4.5.3.1.1), a
// domain of LDH labels (RFC 1035 §2.3.1, each 1–63 octets) with at least two labels, and at most 254
// octets in all (§4.5.3.1.3: a path of 256 including the angle brackets). Address literals are refused:
// customers' addresses have domains, and a literal would bypass the domain's MX.
//
// It is the one address validator of mailgate: configuration (channel From and MAIL FROM, OAuth
// mailboxes), submission (RCPT, channel rules), composition (the channel's From) and test-send all ask
// it, so an address one of them accepts is never refused by another.
func ValidAddress(s string) bool {
	if len(s) > 254 {
		return false
	}
	at := strings.LastIndexByte(s, '@')
	if at <= 0 {
		return false
	}
	local, domain := s[:at], s[at+1:]
	return validLocalPart(local) && validDomain(domain)
}

func validLocalPart(l string) bool {
	if len(l) == 0 || len(l) > 64 {
		return false
	}
	if l[0] == '"' {
		// quoted-string (RFC 5321 §4.1.2): qtextSMTP is printable ASCII except " and \; quoted-pairSMTP
		// is a backslash followed by any printable ASCII.
		if len(l) < 2 || l[len(l)-1] != '"' {
			return false
		}
		q := l[1 : len(l)-1]
		for i := 0; i < len(q); i++ {
			c := q[i]
			switch {
			case c == '\\':
				i++
				if i >= len(q) || q[i] < 32 || q[i] > 126 {
					return false
				}
			case c == '"' || c < 32 || c > 126:
				return false
			}
		}
		return true
	}
	// Dot-string: atoms separated by single dots, no leading or trailing dot.
	for _, atom := range strings.Split(l, ".") {
		if atom == "" {
			return false
		}
		for i := 0; i < len(atom); i++ {
			if !isAtext(atom[i]) {
				return false
			}
		}
	}
	return true
}

// isAtext: RFC 5322 §3.2.3 atext (ASCII only: mailgate does not advertise SMTPUTF8).
func isAtext(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

func validDomain(d string) bool {
	if len(d) == 0 || len(d) > 253 {
		return false
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
