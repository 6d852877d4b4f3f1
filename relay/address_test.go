package relay

import (
	"strings"
	"testing"
)

func TestValidAddress(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"customer@example.net", true},
		{"first.last+tag@sub.example.co.uk", true},
		{`"quoted local"@example.net`, true},
		{`"a\"b"@example.net`, true},
		{"o'brien@example.ie", true},
		{"x@localhost", false},
		{"@example.net", false},
		{"a@", false},
		{"a@@example.net", false},
		{"a..b@example.net", false},
		{".a@example.net", false},
		{"a.@example.net", false},
		{"a b@example.net", false},
		{"a@exa mple.net", false},
		{"a@-example.net", false},
		{"a@example-.net", false},
		{"a@example..net", false},
		{"a@[192.0.2.1]", false},
		{"a@example.net\r\nRCPT TO:<b@example.net>", false},
		{strings.Repeat("a", 65) + "@example.net", false},
		{strings.Repeat("a", 64) + "@example.net", true},
		{"a@" + strings.Repeat("b", 64) + ".net", false},
		{"a@" + strings.Repeat(strings.Repeat("b", 60)+".", 5) + "net", false}, // > 254 in all
		{"ünicode@example.net", false},
	} {
		if got := ValidAddress(tc.in); got != tc.want {
			t.Errorf("ValidAddress(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func FuzzValidAddress(f *testing.F) {
	for _, s := range []string{"customer@example.net", `"q"@example.net`, "a@b", "a@[1.2.3.4]", "x\x00@example.net"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !ValidAddress(s) {
			return
		}
		at := strings.LastIndexByte(s, '@')
		if len(s) > 254 || at < 1 || at > 64 || !strings.Contains(s[at+1:], ".") {
			t.Fatalf("accepted %q", s)
		}
		for _, c := range []byte(s) {
			if c < 32 || c > 126 {
				t.Fatalf("accepted control or non-ASCII byte in %q", s)
			}
		}
		if strings.ContainsAny(s[at+1:], " <>[]\"\\") || (s[0] != '"' && strings.ContainsAny(s[:at], " <>\"\\")) {
			t.Fatalf("accepted %q", s)
		}
	})
}
