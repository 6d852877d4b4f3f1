// Package signatures holds agents' automatic signatures ("Create a Formatted Signature for Outbound
// Emails" in the product guide): a signature has a plain-text and/or an HTML form and a list of users.
//
// Design: both forms always exist after New — the missing one is derived (HTML→text strips tags and
// decodes entities, keeping line breaks for <br>, <p>, <div>, <li>, <tr>; text→HTML escapes and turns
// line breaks into <br>), so the composer can put the plain form into text/plain and the HTML form into
// text/html without special cases. A user belongs to at most one signature: unlike the product's UI,
// which silently moves the user, a config file has no order of edits, so Assign reports a user in two
// signatures as an error naming both. Insertion goes before quoted history when the message marks it
// (SplitText, SplitHTML), else at the end of the agent's content.
package signatures

import (
	"errors"
	"fmt"
	"html"
	"regexp"
	"sort"
	"strings"
)

// Signature is one named signature with both forms.
type Signature struct {
	Name string
	Text string // plain form, "\n" line breaks, no trailing newline
	HTML string // HTML form (a fragment)
}

// New builds a signature from its configured forms; at least one must be non-empty. The missing form is
// derived from the other.
func New(name, text, htmlForm string) (*Signature, error) {
	text = strings.TrimSpace(strings.ReplaceAll(text, "\r\n", "\n"))
	htmlForm = strings.TrimSpace(htmlForm)
	if text == "" && htmlForm == "" {
		return nil, errors.New("needs a plain text or an HTML form (or both)")
	}
	if text == "" {
		text = HTMLToText(htmlForm)
	}
	if htmlForm == "" {
		htmlForm = TextToHTML(text)
	}
	return &Signature{Name: name, Text: text, HTML: htmlForm}, nil
}

// Definition is one configured signature: what config hands over.
type Definition struct {
	Name  string
	Text  string
	HTML  string
	Users []string // agent logins
}

// Assign builds the login → signature map from the configured definitions. It returns every problem,
// each a self-contained message prefixed with the definition's index as "[i]" so the caller can add
// its config path (e.g. "signatures[1]: user "demo" is in signatures "a" and "b"").
func Assign(defs []Definition) (map[string]*Signature, []error) {
	byUser := make(map[string]*Signature)
	owner := make(map[string]string)
	names := make(map[string]int)
	var errs []error
	for i, d := range defs {
		if d.Name == "" {
			errs = append(errs, fmt.Errorf("[%d].name: is empty", i))
		} else if j, dup := names[d.Name]; dup {
			errs = append(errs, fmt.Errorf("[%d].name: %q is already the name of signatures[%d]", i, d.Name, j))
		} else {
			names[d.Name] = i
		}
		sig, err := New(d.Name, d.Text, d.HTML)
		if err != nil {
			errs = append(errs, fmt.Errorf("[%d]: %w", i, err))
			continue
		}
		for _, u := range d.Users {
			// Logins compare case-insensitively, as SMTP AUTH identities are looked up.
			key := strings.ToLower(u)
			if prev, taken := owner[key]; taken {
				errs = append(errs, fmt.Errorf("[%d].users: user %q is in signatures %q and %q (a user can have only one signature)", i, u, prev, d.Name))
				continue
			}
			owner[key] = d.Name
			byUser[u] = sig
		}
	}
	return byUser, errs
}

// InsertText puts the plain form into an agent's plain-text body: before quoted history if the text
// marks it, else at the end. text uses "\n" line breaks.
func (s *Signature) InsertText(text string) string {
	body, quoted := SplitText(text)
	return JoinText(body, s.Text, quoted)
}

// JoinText puts sig between the agent's own text and the quoted history, separated by blank lines.
func JoinText(body, sig, quoted string) string {
	body = strings.TrimRight(body, " \t\n")
	var b strings.Builder
	b.WriteString(body)
	if body != "" {
		b.WriteString("\n\n")
	}
	b.WriteString(sig)
	b.WriteString("\n")
	if quoted != "" {
		b.WriteString("\n")
		b.WriteString(quoted)
	}
	return b.String()
}

// InsertHTML puts the HTML form into an agent's HTML: before quoted history if the HTML marks it, else
// before </body> if present, else at the end.
func (s *Signature) InsertHTML(h string) string {
	body, rest := SplitHTML(h)
	return body + `<div class="signature">` + s.HTML + "</div>\n" + rest
}

// Quoted-history markers in plain text (RFC 3676 §4.5 leaves attribution lines informal; these are the
// ones mail clients write): Outlook's separator and "On <date>, <name> wrote:" in the languages our
// customers' clients use.
var (
	originalMessage = regexp.MustCompile(`^\s*-{3,}\s*(Original Message|Ursprüngliche Nachricht|Message d'origine|Mensaje original)\s*-{3,}\s*$`)
	attribution     = regexp.MustCompile(`^\s*(On|Am|Le|El|Il|Op|Den|På)\s.*\b(wrote|schrieb|a écrit|escribió|ha scritto|schreef|skrev)[^:]*:\s*$`)
	attributionHead = regexp.MustCompile(`^\s*(On|Am|Le|El|Il|Op|Den|På)\s`)
)

// SplitText splits a plain-text body at the first quoted-history marker line: a "-----Original
// Message-----" separator or an "On … wrote:" attribution (which clients sometimes wrap over two
// lines). Without a marker, quoted is empty.
func SplitText(text string) (body, quoted string) {
	lines := strings.SplitAfter(text, "\n")
	off := 0
	for i, l := range lines {
		line := strings.TrimRight(l, "\r\n")
		if originalMessage.MatchString(line) || attribution.MatchString(line) {
			return text[:off], text[off:]
		}
		if i+1 < len(lines) && attributionHead.MatchString(line) && !strings.HasPrefix(line, ">") &&
			attribution.MatchString(line+" "+strings.TrimRight(lines[i+1], "\r\n")) {
			return text[:off], text[off:]
		}
		off += len(l)
	}
	return text, ""
}

var (
	citeBlockquote = regexp.MustCompile(`(?i)<blockquote\b[^>]*\btype\s*=\s*["']?cite\b`)
	gmailQuote     = regexp.MustCompile(`(?i)<div\b[^>]*\bclass\s*=\s*["']?[^"'>]*\bgmail_quote\b`)
	blockStart     = regexp.MustCompile(`(?i)<(div|p|br)\b[^>]*>`)
	bodyEnd        = regexp.MustCompile(`(?i)</body\s*>`)
)

// SplitHTML splits an agent's HTML where the signature goes: before the first <blockquote type="cite">
// (or Gmail's quote container), moving back over an "On … wrote:" attribution just before it; without
// quoted history, before </body> if present, else at the end.
func SplitHTML(h string) (body, rest string) {
	at := -1
	for _, re := range []*regexp.Regexp{citeBlockquote, gmailQuote} {
		if loc := re.FindStringIndex(h); loc != nil && (at < 0 || loc[0] < at) {
			at = loc[0]
		}
	}
	if at >= 0 {
		at = backOverAttribution(h, at)
		return h[:at], h[at:]
	}
	if loc := bodyEnd.FindStringIndex(h); loc != nil {
		return h[:loc[0]], h[loc[0]:]
	}
	return h, ""
}

// backOverAttribution returns the start of the element holding an attribution line that ends right
// before the quote at position at, or at itself when there is none.
func backOverAttribution(h string, at int) int {
	// The attribution may span elements ("<div>On …<br>wrote:</div>"): try the last few block starts,
	// nearest first; the text from one of them up to the quote must be exactly an attribution.
	starts := blockStart.FindAllStringIndex(h[:at], -1)
	for i := len(starts) - 1; i >= 0 && i >= len(starts)-4; i-- {
		text := strings.Join(strings.Fields(HTMLToText(h[starts[i][0]:at])), " ")
		if attribution.MatchString(text) {
			return starts[i][0]
		}
	}
	return at
}

// TextToHTML derives an HTML form from plain text: escaped, with <br> for line breaks.
func TextToHTML(text string) string {
	lines := strings.Split(strings.ReplaceAll(text, "\r\n", "\n"), "\n")
	for i, l := range lines {
		lines[i] = html.EscapeString(l)
	}
	return strings.Join(lines, "<br>\n")
}

// Users lists the logins a map from Assign covers, sorted (for logs and check-config output).
func Users(m map[string]*Signature) []string {
	u := make([]string, 0, len(m))
	for k := range m {
		u = append(u, k)
	}
	sort.Strings(u)
	return u
}
