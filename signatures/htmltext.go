package signatures

import (
	"strconv"
	"strings"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// HTMLToText renders HTML as the plain text a mail client shows for it: the plain form of an HTML-only
// signature, and the text/plain alternative of an HTML-only reply (an HTML-only message scores as spam
// with common filters, and some customers read mail as text). It is a reading of the document, not a
// browser: block elements become
// line breaks (paragraphs and headings a blank line), list items get "- ", a link whose text is not its
// address becomes "text <address>", blockquotes (quoted history) get "> " per line, <pre> keeps its
// spacing, and <head>, <style>, <script> and <template> say nothing. Entities are decoded. Malformed
// HTML is read as a browser would (golang.org/x/net/html's tokenizer); the function never fails.
func HTMLToText(h string) string {
	r := &textRenderer{}
	z := html.NewTokenizer(strings.NewReader(h))
	for {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			// io.EOF at the end; a strings.Reader has no other read error.
			return r.finish()
		case html.TextToken:
			if r.skip == 0 {
				r.text(string(z.Text()))
			}
		case html.StartTagToken, html.SelfClosingTagToken:
			tn, hasAttr := z.TagName()
			a := atom.Lookup(tn)
			var href string
			for hasAttr {
				var k, v []byte
				k, v, hasAttr = z.TagAttr()
				if a == atom.A && string(k) == "href" {
					href = string(v)
				}
			}
			r.start(a, href, tt == html.SelfClosingTagToken)
		case html.EndTagToken:
			tn, _ := z.TagName()
			r.end(atom.Lookup(tn))
		}
	}
}

// textRenderer accumulates the text of one document.
type textRenderer struct {
	out     strings.Builder
	line    strings.Builder // the current line, before its quote prefix
	skip    int             // depth inside elements whose content is not shown
	pre     int             // depth inside <pre>
	quote   int             // blockquote depth: "> " per level
	breaks  int             // line breaks wanted before the next text (2 = a blank line)
	fresh   bool            // at the start of a quote: no blank line before its first text
	space   bool            // a space is due before the next word
	lists   []int           // per open list: 0 for <ul>, else the next <ol> number
	links   []string        // hrefs of the open <a> elements
	linkTxt []string        // the text written inside each open <a> so far
}

func (r *textRenderer) start(a atom.Atom, href string, selfClosing bool) {
	switch a {
	case atom.Head, atom.Style, atom.Script, atom.Template, atom.Title, atom.Noscript:
		if !selfClosing {
			r.skip++
		}
	case atom.Br:
		r.lineBreak()
	case atom.Hr:
		r.block(2)
		r.word("----")
		r.block(2)
	case atom.P, atom.H1, atom.H2, atom.H3, atom.H4, atom.H5, atom.H6, atom.Table:
		r.block(2)
	case atom.Div, atom.Tr, atom.Section, atom.Article, atom.Header, atom.Footer, atom.Dl, atom.Dt, atom.Dd:
		r.block(1)
	case atom.Td, atom.Th:
		r.space = true
	case atom.Blockquote:
		r.block(2)
		r.emitBreaks()
		r.quote++
		r.fresh = true
	case atom.Pre:
		r.block(2)
		r.pre++
	case atom.Ul:
		r.block(1)
		r.lists = append(r.lists, 0)
	case atom.Ol:
		r.block(1)
		r.lists = append(r.lists, 1)
	case atom.Li:
		r.block(1)
		marker := "- "
		if n := len(r.lists); n > 0 && r.lists[n-1] > 0 {
			marker = strconv.Itoa(r.lists[n-1]) + ". "
			r.lists[n-1]++
		}
		r.word(strings.Repeat("  ", max(len(r.lists)-1, 0)) + marker)
		r.space = false
	case atom.A:
		r.links = append(r.links, href)
		r.linkTxt = append(r.linkTxt, "")
	case atom.Img:
		// An image says nothing in text; its alt text is an attribute the tokenizer gave us no room
		// for here, and a reply's images are mostly logos.
	}
}

func (r *textRenderer) end(a atom.Atom) {
	switch a {
	case atom.Head, atom.Style, atom.Script, atom.Template, atom.Title, atom.Noscript:
		if r.skip > 0 {
			r.skip--
		}
	case atom.P, atom.H1, atom.H2, atom.H3, atom.H4, atom.H5, atom.H6, atom.Table, atom.Pre:
		if a == atom.Pre && r.pre > 0 {
			r.pre--
		}
		r.block(2)
	case atom.Div, atom.Tr, atom.Li, atom.Section, atom.Article, atom.Header, atom.Footer, atom.Dl, atom.Dt, atom.Dd:
		r.block(1)
	case atom.Blockquote:
		r.block(2)
		r.flush()
		if r.quote > 0 {
			r.quote--
		}
	case atom.Ul, atom.Ol:
		if n := len(r.lists); n > 0 {
			r.lists = r.lists[:n-1]
		}
		r.block(1)
	case atom.A:
		n := len(r.links)
		if n == 0 {
			return
		}
		href, text := r.links[n-1], r.linkTxt[n-1]
		r.links, r.linkTxt = r.links[:n-1], r.linkTxt[:n-1]
		if shownLink(href, text) {
			r.space = true
			r.word("<" + href + ">")
		}
	}
}

// shownLink reports whether a link's address adds to its text: web and mail addresses that the text
// does not already show.
func shownLink(href, text string) bool {
	h := strings.TrimSpace(href)
	lower := strings.ToLower(h)
	if !strings.HasPrefix(lower, "http://") && !strings.HasPrefix(lower, "https://") && !strings.HasPrefix(lower, "mailto:") {
		return false
	}
	return !strings.Contains(text, strings.TrimPrefix(strings.TrimPrefix(h, "mailto:"), "MAILTO:"))
}

func (r *textRenderer) text(s string) {
	if r.pre > 0 {
		lines := strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
		for i, l := range lines {
			if i > 0 {
				r.lineBreak()
			}
			r.emit(l)
		}
		return
	}
	if s == "" {
		return
	}
	lead := isHTMLSpace(rune(s[0]))
	trail := isHTMLSpace(rune(s[len(s)-1]))
	words := strings.Join(strings.FieldsFunc(s, isHTMLSpace), " ")
	if lead {
		r.space = true
	}
	if words != "" {
		r.word(words)
	}
	if trail {
		r.space = true
	}
}

func isHTMLSpace(c rune) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }

// emitBreaks writes the current line and the blank lines that are due.
func (r *textRenderer) emitBreaks() {
	if r.breaks == 0 {
		return
	}
	r.flush()
	for range r.breaks - 1 {
		r.writeLine("")
	}
	r.breaks = 0
	r.space = false
}

// word writes text after the breaks and the space that are due.
func (r *textRenderer) word(s string) {
	r.emitBreaks()
	r.fresh = false
	if r.space && r.line.Len() > 0 {
		r.line.WriteByte(' ')
	}
	r.space = false
	r.line.WriteString(s)
	if n := len(r.linkTxt); n > 0 && len(r.linkTxt[n-1]) < 4096 {
		r.linkTxt[n-1] += s // what a link's text shows, to tell whether its address adds anything
	}
}

func (r *textRenderer) emit(s string) {
	if r.breaks > 0 {
		r.word("")
	}
	r.line.WriteString(s)
}

// block asks for n line breaks before what comes next (a blank line for n=2); breaks do not add up.
func (r *textRenderer) block(n int) {
	if r.fresh || (r.out.Len() == 0 && r.line.Len() == 0) {
		return // nothing written yet (in the document, or in this quote): no leading blank lines
	}
	r.breaks = max(r.breaks, n)
}

// lineBreak ends the current line (a <br>, a line of <pre>); after a block break it adds nothing.
func (r *textRenderer) lineBreak() {
	if r.breaks == 0 {
		r.writeLine(r.line.String())
		r.line.Reset()
		r.space = false
	}
}

// flush writes the current line, if any.
func (r *textRenderer) flush() {
	if r.line.Len() > 0 {
		r.writeLine(r.line.String())
		r.line.Reset()
	}
}

func (r *textRenderer) writeLine(s string) {
	s = strings.TrimRight(s, " ")
	if r.quote > 0 {
		p := strings.Repeat(">", r.quote)
		if s != "" {
			p += " "
		}
		s = p + s
	}
	r.out.WriteString(s)
	r.out.WriteByte('\n')
}

func (r *textRenderer) finish() string {
	r.flush()
	return strings.Trim(r.out.String(), "\n")
}
