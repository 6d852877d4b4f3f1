package compose

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestHTMLToText(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"paragraphs", "<p>Hello,</p><p>your order   has\nshipped.</p>", "Hello,\n\nyour order has shipped.\n"},
		{"br", "Line one<br>Line two<br/>Line three", "Line one\nLine two\nLine three\n"},
		{"entities", "<p>Caf&eacute; &amp; &lt;tea&gt;&nbsp;time</p>", "Café & <tea>\u00a0time\n"},
		{"head style script skipped", "<html><head><title>T</title><style>p{color:red}</style></head><body><script>x()</script><p>Hi</p></body></html>", "Hi\n"},
		{"link with different text", `<p>See <a href="https://shop.example/track?id=1">tracking</a>.</p>`, "See tracking <https://shop.example/track?id=1>.\n"},
		{"link showing its address", `<a href="https://shop.example/">https://shop.example/</a>`, "https://shop.example/\n"},
		{"mailto", `<a href="mailto:help@shop.example">write to us</a>`, "write to us <mailto:help@shop.example>\n"},
		{"javascript link dropped", `<a href="javascript:alert(1)">click</a>`, "click\n"},
		{"lists", "<ul><li>one</li><li>two</li></ul><ol><li>first</li><li>second</li></ol>", "- one\n- two\n1. first\n2. second\n"},
		{"blockquote", "<p>Thanks!</p><blockquote><p>where is my order?</p><p>please</p></blockquote>", "Thanks!\n\n> where is my order?\n>\n> please\n"},
		{"pre", "<pre>a  b\n  c</pre>", "a  b\n  c\n"},
		{"table", "<table><tr><td>Item</td><td>1</td></tr><tr><td>Total</td><td>2</td></tr></table>", "Item 1\nTotal 2\n"},
		{"malformed", "<p>unclosed <b>bold <div>x", "unclosed bold\nx\n"},
		{"empty", "", "\n"},
	} {
		if got := HTMLToText(tc.in); got != tc.want {
			t.Errorf("%s: HTMLToText(%q) = %q, want %q", tc.name, tc.in, got, tc.want)
		}
	}
}

// FuzzHTMLToText: any input renders without panicking, as valid UTF-8 when the input is, ending with a
// line break, and a whole script element's content never shows.
func FuzzHTMLToText(f *testing.F) {
	f.Add("<p>Hello <a href='https://x.example'>x</a></p><blockquote>q<br>r</blockquote>")
	f.Add("<ol><li><ul><li>a</ul></ol><pre>\n\n</pre><script>secret()</script>")
	f.Add("<a href=mailto:a@b><a href=http://c>d</a></a>")
	f.Fuzz(func(t *testing.T, in string) {
		out := HTMLToText(in)
		if utf8.ValidString(in) && !utf8.ValidString(out) {
			t.Fatalf("invalid UTF-8 from %q: %q", in, out)
		}
		if !strings.HasSuffix(out, "\n") {
			t.Fatalf("output %q does not end with a line break", out)
		}
		if wrapped := HTMLToText("<p>a</p><script>" + strings.ReplaceAll(in, "<", "") + "</script><p>b</p>"); wrapped != "a\n\nb\n" {
			t.Fatalf("script content shown: %q", wrapped)
		}
	})
}
