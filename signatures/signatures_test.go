package signatures

import (
	"html"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestNewDerivesMissingForm(t *testing.T) {
	s, err := New("a", "", `<div><b>Jane Doe</b><br/>Support &amp; Sales</div><p>Tel. +49&nbsp;89 123</p><style>p{}</style><!-- x -->`)
	if err != nil {
		t.Fatal(err)
	}
	if s.Text != "Jane Doe\nSupport & Sales\n\nTel. +49\u00a089 123" { // &nbsp; stays non-breaking
		t.Errorf("derived text %q", s.Text)
	}
	s, err = New("b", "Jane <jd@example.com>\r\nSupport & Sales", "")
	if err != nil {
		t.Fatal(err)
	}
	if s.HTML != "Jane &lt;jd@example.com&gt;<br>\nSupport &amp; Sales" {
		t.Errorf("derived html %q", s.HTML)
	}
	if _, err := New("c", " ", "\n"); err == nil {
		t.Error("empty signature accepted")
	}
}

func TestAssign(t *testing.T) {
	m, errs := Assign([]Definition{
		{Name: "support", Text: "S", Users: []string{"jane", "bob"}},
		{Name: "sales", HTML: "<b>x</b>", Users: []string{"ann", "Jane"}},
		{Name: "support", Text: "dup"},
		{Name: "empty", Users: []string{"carl"}},
	})
	want := []string{
		`[1].users: user "Jane" is in signatures "support" and "sales" (a user can have only one signature)`,
		`[2].name: "support" is already the name of signatures[0]`,
		`[3]: needs a plain text or an HTML form (or both)`,
	}
	if len(errs) != len(want) {
		t.Fatalf("errors %v", errs)
	}
	for i, w := range want {
		if errs[i].Error() != w {
			t.Errorf("error %d: %q, want %q", i, errs[i], w)
		}
	}
	if m["jane"].Name != "support" || m["ann"].Name != "sales" || m["Jane"] != nil {
		t.Errorf("assignment %v", Users(m))
	}
}

func TestSplitText(t *testing.T) {
	cases := []struct{ in, body string }{
		{"Hi\n\nOn Mon, 1 Jan 2024 at 10:00, Bob <b@x> wrote:\n> q\n", "Hi\n\n"},
		{"Hi\nOn Mon, 1 Jan 2024 at 10:00, Bob\n<b@x> wrote:\n> q\n", "Hi\n"},
		{"Hi\n-----Original Message-----\nFrom: x\n", "Hi\n"},
		{"Hallo\nAm 01.01.2024 um 10:00 schrieb Bob:\n> q\n", "Hallo\n"},
		{"On second thought, no.\nThanks\n", "On second thought, no.\nThanks\n"},
		{"No history\n", "No history\n"},
	}
	for _, c := range cases {
		body, quoted := SplitText(c.in)
		if body != c.body || body+quoted != c.in {
			t.Errorf("SplitText(%q) = %q + %q, want body %q", c.in, body, quoted, c.body)
		}
	}
	s := &Signature{Text: "-- \nJane"}
	if got := s.InsertText("Hi\n\nOn Mon, Bob wrote:\n> q\n"); got != "Hi\n\n-- \nJane\n\nOn Mon, Bob wrote:\n> q\n" {
		t.Errorf("InsertText %q", got)
	}
	if got := s.InsertText("Hi\n\n\n"); got != "Hi\n\n-- \nJane\n" {
		t.Errorf("InsertText at end %q", got)
	}
}

func TestSplitHTML(t *testing.T) {
	cases := []struct{ in, body string }{
		{`<html><body><p>Hi</p></body></html>`, `<html><body><p>Hi</p>`},
		{`<p>Hi</p>`, `<p>Hi</p>`},
		{`<p>Hi</p><BLOCKQUOTE TYPE="cite">old</BLOCKQUOTE></body>`, `<p>Hi</p>`},
		{`<p>Hi</p><div class="moz-cite-prefix">On Mon, 1 Jan 2024, Bob wrote:<br></div><blockquote type="cite">old</blockquote>`, `<p>Hi</p>`},
		{`<p>Hi</p><div>On Mon, 1 Jan 2024 Bob &lt;b@x&gt;<br>wrote:</div><blockquote type=cite>old</blockquote>`, `<p>Hi</p>`},
		{`<div>Hi</div><div class="gmail_quote"><div>On Mon wrote:</div><blockquote>old</blockquote></div>`, `<div>Hi</div>`},
		{`<p>Hi</p><p>Regards</p><blockquote type="cite">old</blockquote>`, `<p>Hi</p><p>Regards</p>`},
		{`<blockquote>not a citation</blockquote><p>Hi</p>`, `<blockquote>not a citation</blockquote><p>Hi</p>`},
	}
	for _, c := range cases {
		body, rest := SplitHTML(c.in)
		if body != c.body || body+rest != c.in {
			t.Errorf("SplitHTML(%q) = %q + %q, want body %q", c.in, body, rest, c.body)
		}
	}
}

// FuzzSplit: splitting never loses or reorders bytes, and inserting a signature keeps the agent's
// text and the quoted history in order around it.
func FuzzSplit(f *testing.F) {
	for _, s := range []string{"Hi\nOn Mon, X wrote:\n> q", "<p>a</p><blockquote type=cite>q</blockquote>", "-----Original Message-----", "<body></body>", "On x\nwrote:"} {
		f.Add(s)
	}
	sig := &Signature{Text: "SIGNATURE-TEXT", HTML: "<i>SIGNATURE-HTML</i>"}
	f.Fuzz(func(t *testing.T, s string) {
		body, quoted := SplitText(s)
		if body+quoted != s {
			t.Fatalf("SplitText lost bytes: %q -> %q + %q", s, body, quoted)
		}
		out := sig.InsertText(s)
		if !strings.Contains(out, "SIGNATURE-TEXT") || !strings.HasPrefix(out, strings.TrimRight(body, " \t\n")) || !strings.HasSuffix(out, quoted) {
			t.Fatalf("InsertText(%q) = %q", s, out)
		}
		hb, hr := SplitHTML(s)
		if hb+hr != s {
			t.Fatalf("SplitHTML lost bytes: %q -> %q + %q", s, hb, hr)
		}
		if got := sig.InsertHTML(s); !strings.HasPrefix(got, hb) || !strings.HasSuffix(got, hr) {
			t.Fatalf("InsertHTML(%q) = %q", s, got)
		}
	})
}

// FuzzHTMLToText: the plain form has no CR, is valid UTF-8 when its input is, has no leading or
// trailing line break, never shows a script element's content, and text→HTML→text keeps the words.
func FuzzHTMLToText(f *testing.F) {
	for _, s := range []string{"<b>x</b><br>y", "a &amp; b", "<style>x</style>y", "<<>>", "Jane\nDoe",
		"<p>Hello <a href='https://x.example'>x</a></p><blockquote>q<br>r</blockquote>",
		"<ol><li><ul><li>a</ul></ol><pre>\n\n</pre>", "<a href=mailto:a@b><a href=http://c>d</a></a>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		txt := HTMLToText(s)
		if strings.Contains(txt, "\r") {
			t.Fatalf("CR in %q", txt)
		}
		if utf8.ValidString(s) && !utf8.ValidString(txt) {
			t.Fatalf("invalid UTF-8 from %q: %q", s, txt)
		}
		if strings.HasPrefix(txt, "\n") || strings.HasSuffix(txt, "\n") {
			t.Fatalf("%q starts or ends with a line break", txt)
		}
		if w := HTMLToText("<p>a</p><script>" + strings.ReplaceAll(s, "<", "") + "</script><p>b</p>"); w != "a\n\nb" {
			t.Fatalf("script content shown: %q", w)
		}
		if !strings.ContainsAny(s, "<>&") {
			back := HTMLToText(TextToHTML(s))
			if strings.Join(strings.Fields(back), " ") != strings.Join(strings.Fields(html.UnescapeString(s)), " ") {
				t.Fatalf("round trip %q -> %q", s, back)
			}
		}
	})
}
