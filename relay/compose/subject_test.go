package compose

import (
	"mime"
	"net/mail"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestFormatSubject(t *testing.T) {
	end := TicketFormat{}
	start := TicketFormat{Position: PositionStart}
	br := TicketFormat{Style: StyleBrackets}
	brStart := TicketFormat{Style: StyleBrackets, Position: PositionStart}
	braces := TicketFormat{Style: StyleBraces}
	hidden := TicketFormat{Style: StyleHidden}
	cases := []struct {
		subject, ticket string
		f               TicketFormat
		want            string
	}{
		{"Help", "123456", end, "Help 123456"},
		{"Help", "123456", start, "123456 Help"},
		{"Help", "123456", br, "Help [#123456]"},
		{"Help", "123456", brStart, "[#123456] Help"},
		{"Help", "123456", braces, "Help {#123456}"},
		{"Help", "123456", hidden, "Help"},
		{"Re: Help", "123456", start, "Re: 123456 Help"},
		{"Re: Re: Help [#123456]", "123456", br, "Re: Help [#123456]"},
		{"RE: Re: re: Help", "", br, "RE: Help"},
		{"AW: Re: Hilfe {#7}", "7", br, "AW: Hilfe [#7]"},
		{"SV: Sv: Hjälp", "8", braces, "SV: Hjälp {#8}"},
		{"Fwd: Re: Order", "9", end, "Fwd: Order 9"},
		{"Re[2]: Order", "9", end, "Re: Order 9"},
		{"Re : Order", "9", end, "Re: Order 9"},
		{"Re:Order", "9", end, "Re: Order 9"},
		{"Re: [#123456] Re: Help 123456", "123456", br, "Re: Help [#123456]"},
		{"[#123456] Help", "123456", br, "Help [#123456]"},
		{"Help [#123456]", "123456", brStart, "[#123456] Help"},
		{"Help 123456", "123456", hidden, "Help"},
		{"Order 42 status", "42", end, "Order 42 status 42"}, // a number in the middle is the customer's
		{"Invoice [#999]", "123", br, "Invoice [#999] [#123]"},
		{"", "5", br, "[#5]"},
		{"Re:", "5", br, "Re: [#5]"},
		{"  lots   of\tspace  ", "", end, "lots of space"},
		{"Regarding your order", "1", end, "Regarding your order 1"}, // "Re" only as a prefix word
	}
	for _, c := range cases {
		got := FormatSubject(c.subject, c.ticket, c.f)
		if got != c.want {
			t.Errorf("FormatSubject(%q, %q, %+v) = %q, want %q", c.subject, c.ticket, c.f, got, c.want)
		}
		if again := FormatSubject(got, c.ticket, c.f); again != got {
			t.Errorf("not idempotent: %q -> %q", got, again)
		}
	}
}

func TestParseTicket(t *testing.T) {
	cases := map[string]string{
		"Re: Help [#123456]": "123456",
		"{#42} Order":        "42",
		"Invoice 2024":       "",
		"[#12}":              "",
		"[#] x":              "",
		"a [#1x] b {#77}":    "77",
	}
	for s, want := range cases {
		got, ok := ParseTicket(s)
		if got != want || ok != (want != "") {
			t.Errorf("ParseTicket(%q) = %q %v, want %q", s, got, ok, want)
		}
	}
}

var fuzzFormats = []TicketFormat{
	{}, {Position: PositionStart}, {Style: StyleBrackets}, {Style: StyleBrackets, Position: PositionStart},
	{Style: StyleBraces}, {Style: StyleBraces, Position: PositionStart}, {Style: StyleHidden},
}

// FuzzFormatSubject: formatting is idempotent, never shows the ticket twice, keeps at most one prefix,
// and a visible tag can be parsed back.
func FuzzFormatSubject(f *testing.F) {
	for _, s := range []string{"Re: Re: Help [#123456]", "AW: {#1} SV: x 1", "Fwd:Re:", "Re : [#9] Re", "[#5] [#5] 5 5", ""} {
		f.Add(s, "123456", uint8(0))
		f.Add(s, "5", uint8(2))
	}
	f.Fuzz(func(t *testing.T, subject, ticket string, fi uint8) {
		if !ValidTicket(ticket) {
			ticket = ""
		}
		fm := fuzzFormats[int(fi)%len(fuzzFormats)]
		once := FormatSubject(subject, ticket, fm)
		twice := FormatSubject(once, ticket, fm)
		if once != twice {
			t.Fatalf("not idempotent: %q -> %q -> %q", subject, once, twice)
		}
		if ticket == "" {
			return
		}
		tag := fm.Tag(ticket)
		if tag != "" && strings.Count(once, tag) < 1 {
			t.Fatalf("%q lacks the tag %q", once, tag)
		}
		if tag != "" && fm.style() != StylePlain {
			if got, ok := ParseTicket(once); ok && got != ticket && !strings.Contains(subject, got) {
				t.Fatalf("ParseTicket(%q) = %q, want %q", once, got, ticket)
			}
			if strings.Count(once, tag) != 1 {
				t.Fatalf("tag %q twice in %q", tag, once)
			}
		}
		if n := len(replyPrefix.FindAllString(once, -1)); n > 1 {
			t.Fatalf("more than one leading prefix in %q", once)
		}
	})
}

func FuzzParseTicket(f *testing.F) {
	for _, s := range []string{"Re: [#123]", "{#1}", "[#1}", "x [#12345678901234567890] y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := ParseTicket(s)
		if ok != (got != "") || (ok && !ValidTicket(got)) {
			t.Fatalf("ParseTicket(%q) = %q %v", s, got, ok)
		}
		if ok && !strings.Contains(s, "[#"+got+"]") && !strings.Contains(s, "{#"+got+"}") {
			t.Fatalf("ParseTicket(%q) = %q, not a tag of the subject", s, got)
		}
	})
}

func TestFormatFrom(t *testing.T) {
	cases := []struct{ name, want string }{
		{"Example Support", "Example Support <s@example.com>"},
		{"Support @ Example", `"Support @ Example" <s@example.com>`},
		{`Say "hi", \ there`, `"Say \"hi\", \\ there" <s@example.com>`},
		{"Zoë", "=?utf-8?q?Zo=C3=AB?= <s@example.com>"},
		{"Zoë @ Shop", "=?utf-8?q?Zo=C3=AB_=40_Shop?= <s@example.com>"},
		{"", "<s@example.com>"},
		{"Evil\r\nBcc: x@y", "\"Evil Bcc: x@y\" <s@example.com>"},
	}
	for _, c := range cases {
		if got := FormatFrom(c.name, "s@example.com"); got != c.want {
			t.Errorf("FormatFrom(%q) = %q, want %q", c.name, got, c.want)
		}
	}
}

// FuzzFormatFrom: any display name gives a From that parses back (net/mail, RFC 5322) to the same name,
// has no unquoted "@" before the address, and folds into lines of at most 78 characters.
func FuzzFormatFrom(f *testing.F) {
	for _, s := range []string{"Example Support", "a@b", "Zoë @ Société Générale, Paris", `"\`, "日本語のサポートチーム – お問い合わせ窓口 (東京)", strings.Repeat("é", 100)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		v := FormatFrom(name, "support@example.com")
		want := strings.Join(strings.Fields(sanitize(name)), " ")
		a, err := (&mail.AddressParser{WordDecoder: &mime.WordDecoder{}}).Parse(v)
		if err != nil {
			t.Fatalf("FormatFrom(%q) = %q: %v", name, v, err)
		}
		if a.Address != "support@example.com" || a.Name != want {
			t.Fatalf("FormatFrom(%q) = %q parses to %q <%s>", name, v, a.Name, a.Address)
		}
		if !utf8.ValidString(v) || !isASCII(v) {
			t.Fatalf("not ASCII: %q", v)
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(FoldHeader("From", v)), "\r\n"), "\r\n") {
			// Encoded names fold within 78; a quoted ASCII name without spaces cannot fold, but
			// must stay within RFC 5322's 998.
			if len(line) > 78 && (!isASCII(name) || len(line) > 998) && len(name) < 900 {
				t.Fatalf("line of %d: %q", len(line), line)
			}
		}
	})
}

// FuzzEncodeUnstructured: a subject encodes to ASCII that decodes back and folds within 78 characters.
func FuzzEncodeUnstructured(f *testing.F) {
	for _, s := range []string{"Hello", "Grüße aus München", strings.Repeat("x", 300), "=?utf-8?q?x?=", "a_b?c=d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v := EncodeUnstructured(s)
		if !isASCII(v) || strings.ContainsAny(v, "\r\n") {
			t.Fatalf("%q -> %q", s, v)
		}
		want := strings.Join(strings.Fields(sanitize(s)), " ")
		got, err := (&mime.WordDecoder{}).DecodeHeader(v)
		if err != nil {
			t.Fatalf("%q -> %q: %v", s, v, err)
		}
		if got != want {
			t.Fatalf("%q -> %q -> %q", s, v, got)
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(FoldHeader("Subject", v)), "\r\n"), "\r\n") {
			if len(line) > 78 {
				t.Fatalf("line of %d: %q", len(line), line)
			}
		}
	})
}
