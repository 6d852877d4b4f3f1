package compose

import (
	"fmt"
	"regexp"
	"strings"
)

// Position is where the ticket number goes in the subject ("Email ticket number" in the product guide).
type Position string

// Positions. The zero value means PositionEnd, the product's default.
const (
	PositionEnd   Position = "end"
	PositionStart Position = "start"
)

// Style is how the ticket number is decorated in the subject.
type Style string

// Styles. The zero value means StylePlain, the product's default.
const (
	StylePlain    Style = "plain"    // 123456
	StyleBrackets Style = "brackets" // [#123456]
	StyleBraces   Style = "braces"   // {#123456}
	StyleHidden   Style = "hidden"   // not in the subject (still in the Message-ID)
)

// Threading is the channel's threading option ("Threading Options" in the product guide).
type Threading string

// Threading modes. The zero value means PreferInReplyTo, the product's default.
const (
	PreferInReplyTo Threading = "prefer_in_reply_to"
	IgnoreInReplyTo Threading = "ignore_in_reply_to"
)

// TicketFormat is a channel's ticket-number format.
type TicketFormat struct {
	Position Position
	Style    Style
}

func (f TicketFormat) position() Position {
	if f.Position == "" {
		return PositionEnd
	}
	return f.Position
}

func (f TicketFormat) style() Style {
	if f.Style == "" {
		return StylePlain
	}
	return f.Style
}

// FieldError is one configuration problem, with the field's path relative to the object validated
// (e.g. "ticket.style"), so config validation can prefix the object's own path.
type FieldError struct {
	Field string
	Msg   string
}

// Error renders "field: message".
func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Validate checks the format's values and its combination with the threading mode: with
// IgnoreInReplyTo, customers' replies are threaded by the ticket number in the subject alone, so a
// hidden ticket number would make every reply a new case.
func (f TicketFormat) Validate(t Threading) []error {
	var errs []error
	switch f.Position {
	case "", PositionEnd, PositionStart:
	default:
		errs = append(errs, &FieldError{"ticket.position", fmt.Sprintf("%q: must be one of end, start", f.Position)})
	}
	switch f.Style {
	case "", StylePlain, StyleBrackets, StyleBraces, StyleHidden:
	default:
		errs = append(errs, &FieldError{"ticket.style", fmt.Sprintf("%q: must be one of plain, brackets, braces, hidden", f.Style)})
	}
	switch t {
	case "", PreferInReplyTo:
	case IgnoreInReplyTo:
		if f.Style == StyleHidden {
			errs = append(errs, &FieldError{"threading", "ignore_in_reply_to needs a visible ticket number (ticket.style is hidden): customers' replies could not be threaded"})
		}
	default:
		errs = append(errs, &FieldError{"threading", fmt.Sprintf("%q: must be one of prefer_in_reply_to, ignore_in_reply_to", t)})
	}
	return errs
}

// Tag renders the ticket number in the format's style ("" for hidden or no ticket).
func (f TicketFormat) Tag(ticket string) string {
	if ticket == "" {
		return ""
	}
	switch f.style() {
	case StyleBrackets:
		return "[#" + ticket + "]"
	case StyleBraces:
		return "{#" + ticket + "}"
	case StyleHidden:
		return ""
	default:
		return ticket
	}
}

// MaxTicketLen bounds a ticket number: long enough for any CRM's case number, short enough for a
// Message-ID's local part.
const MaxTicketLen = 20

// ValidTicket reports whether s is a ticket number: 1 to MaxTicketLen ASCII digits.
func ValidTicket(s string) bool {
	if len(s) == 0 || len(s) > MaxTicketLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

var ticketTag = regexp.MustCompile(`[\[{]#([0-9]{1,20})[\]}]`)

// ParseTicket finds a ticket tag, [#123456] or {#123456}, in a subject. A plain number is not a tag:
// "Invoice 2024" must not become ticket 2024, so plain-style tickets are only recognised when the
// ticket is already known (X-Mailgate-Ticket), by FormatSubject.
func ParseTicket(subject string) (ticket string, ok bool) {
	for _, m := range ticketTag.FindAllStringSubmatchIndex(subject, -1) {
		open, closing := subject[m[0]], subject[m[1]-1]
		if (open == '[') == (closing == ']') {
			return subject[m[2]:m[3]], true
		}
	}
	return "", false
}

// replyPrefix matches one reply or forward prefix as mail clients write them, in the languages our
// customers' clients use: Re, AW (German), SV/VS (Nordic), Antw (Dutch), Fwd/Fw/WG/TR, with an optional
// counter ("Re[2]:", "Re(2):"). Case-insensitive.
var replyPrefix = regexp.MustCompile(`^(?i)(re|aw|sv|vs|antw|fwd|fw|wg|tr)(\[[0-9]+\]|\([0-9]+\))?\s*:`)

// FormatSubject puts the ticket number into a subject in format f. It is idempotent and made for
// reply chains: every existing copy of this ticket's tag (in any style, and a plain number at either
// end) is removed, the leading chain of Re:/RE:/AW:/SV:/Fwd: prefixes (and tags between them) is
// collapsed to its first prefix, written once, and the tag is put back once, at the start (after the
// prefix) or the end. Runs of white space collapse to one space. An empty ticket only normalises.
func FormatSubject(subject, ticket string, f TicketFormat) string {
	if ticket != "" {
		// Decorated tags are unambiguous: removed wherever they are, even glued to a word.
		subject = strings.NewReplacer("[#"+ticket+"]", " ", "{#"+ticket+"}", " ").Replace(subject)
	}
	words := strings.Fields(subject)
	prefix := ""
	// Leading prefixes and tags, in any order: "Re: [#1] RE: AW: text".
	for len(words) > 0 {
		w := words[0]
		if ticket != "" && isTicketWord(w, ticket) {
			words = words[1:]
			continue
		}
		loc := replyPrefix.FindStringIndex(w)
		if loc == nil {
			// "Re :" splits into two words.
			if len(words) > 1 && words[1] == ":" && replyPrefix.MatchString(w+":") {
				w = w + ":"
				words = append([]string{w}, words[2:]...)
				continue
			}
			break
		}
		if prefix == "" {
			prefix = w[:loc[1]]
			if i := strings.IndexAny(prefix, "[( \t"); i >= 0 {
				prefix = prefix[:i] + ":"
			}
		}
		rest := w[loc[1]:]
		if rest == "" {
			words = words[1:]
		} else {
			words[0] = rest // "Re:Hello"
		}
	}
	if ticket != "" {
		// A plain number at the end.
		for len(words) > 0 && isTicketWord(words[len(words)-1], ticket) {
			words = words[:len(words)-1]
		}
	}
	text := strings.Join(words, " ")
	tag := f.Tag(ticket)
	var parts []string
	if prefix != "" {
		parts = append(parts, prefix)
	}
	if f.position() == PositionStart {
		parts = append(parts, tag, text)
	} else {
		parts = append(parts, text, tag)
	}
	out := parts[:0]
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, " ")
}

func isTicketWord(w, ticket string) bool {
	return w == ticket || w == "[#"+ticket+"]" || w == "{#"+ticket+"}"
}
