package signatures

import (
	"testing"
)

func TestHTMLToText(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"paragraphs", "<p>Hello,</p><p>your order   has\nshipped.</p>", "Hello,\n\nyour order has shipped."},
		{"br", "Line one<br>Line two<br/>Line three", "Line one\nLine two\nLine three"},
		{"entities", "<p>Caf&eacute; &amp; &lt;tea&gt;&nbsp;time</p>", "Café & <tea>\u00a0time"},
		{"head style script skipped", "<html><head><title>T</title><style>p{color:red}</style></head><body><script>x()</script><p>Hi</p></body></html>", "Hi"},
		{"link with different text", `<p>See <a href="https://shop.example/track?id=1">tracking</a>.</p>`, "See tracking <https://shop.example/track?id=1>."},
		{"link showing its address", `<a href="https://shop.example/">https://shop.example/</a>`, "https://shop.example/"},
		{"mailto", `<a href="mailto:help@shop.example">write to us</a>`, "write to us <mailto:help@shop.example>"},
		{"javascript link dropped", `<a href="javascript:alert(1)">click</a>`, "click"},
		{"lists", "<ul><li>one</li><li>two</li></ul><ol><li>first</li><li>second</li></ol>", "- one\n- two\n1. first\n2. second"},
		{"blockquote", "<p>Thanks!</p><blockquote><p>where is my order?</p><p>please</p></blockquote>", "Thanks!\n\n> where is my order?\n>\n> please"},
		{"pre", "<pre>a  b\n  c</pre>", "a  b\n  c"},
		{"table", "<table><tr><td>Item</td><td>1</td></tr><tr><td>Total</td><td>2</td></tr></table>", "Item 1\nTotal 2"},
		{"malformed", "<p>unclosed <b>bold <div>x", "unclosed bold\nx"},
		{"empty", "", ""},
	} {
		if got := HTMLToText(tc.in); got != tc.want {
			t.Errorf("%s: HTMLToText(%q) = %q, want %q", tc.name, tc.in, got, tc.want)
		}
	}
}
