package compose

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // the BU time zone must not depend on the host's zoneinfo

	"github.com/mailgate/mailgate/relay/peertest"
	"github.com/mailgate/mailgate/signatures"
	"github.com/mailgate/mailgate/templates"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// seeded is a deterministic random stream for reproducible Message-IDs and boundaries.
func seeded(seed uint64) *rand.ChaCha8 {
	var s [32]byte
	s[0] = byte(seed)
	return rand.NewChaCha8(s)
}

var fixedNow = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)

func mustTemplate(t testing.TB, html, text string) *templates.Template {
	t.Helper()
	tm, err := templates.Parse("brand", html, text)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

func brandTemplate(t testing.TB) *templates.Template {
	return mustTemplate(t,
		`<!DOCTYPE html><html><head><meta charset="utf-8"><title>{{.Subject}}</title></head>`+
			`<body><table class="brand"><tr><td><h1>{{.DisplayName}}</h1></td></tr><tr><td>{{.Content}}</td></tr>`+
			`<tr><td class="footer">{{if .Ticket}}Ticket {{.Ticket}} · {{end}}Sent by {{.AgentName}}</td></tr></table></body></html>`,
		"")
}

func brandTemplateWithText(t testing.TB) *templates.Template {
	return mustTemplate(t,
		`<html><body><div class="brand">{{.DisplayName}}</div>{{.Content}}</body></html>`,
		"{{.DisplayName}}\n==========\n\n{{.Content}}\n--\nTicket {{.Ticket}}\n")
}

func janeSignature(t testing.TB) *signatures.Signature {
	s, err := signatures.New("support", "Jane Doe\nCustomer Support", `<p><b>Jane Doe</b><br>Customer Support</p>`)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// attachment is a deterministic binary payload with its base64 form in 76-character lines.
type attachment struct {
	data []byte
}

func newAttachment(seed uint64, n int) attachment {
	r := rand.New(seeded(seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return attachment{data: b}
}

func (a attachment) b64() string {
	s := base64.StdEncoding.EncodeToString(a.data)
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\r\n")
		s = s[76:]
	}
	b.WriteString(s)
	return b.String()
}

func (a attachment) sha() string {
	h := sha256.Sum256(a.data)
	return hex.EncodeToString(h[:])
}

func crlf(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

// goldenCase is one input of the golden matrix, with what the independent parser must find.
type goldenCase struct {
	name    string
	channel func(t testing.TB) *Channel
	agent   func(t testing.TB) Agent
	input   string
	// expectations checked on Python's parse
	subject     string
	displayName string
	structure   []string          // content types in walk order
	attachments map[string]string // filename -> sha256 of the input's bytes
	textHas     []string
	htmlHas     []string
	ticket      string
	reply       bool
	// textOrder/htmlOrder: these substrings must appear in this order
	textOrder []string
	htmlOrder []string
}

func channel(ticket TicketFormat, tmpl func(testing.TB) *templates.Template, exts ...string) func(testing.TB) *Channel {
	return func(t testing.TB) *Channel {
		loc, err := time.LoadLocation("Europe/Berlin")
		if err != nil {
			t.Fatal(err)
		}
		c := &Channel{
			Name: "support", FromAddress: "support@shop.example.com", DisplayName: "Example Shop Support",
			Ticket: ticket, Location: loc, AllowedExtensions: exts,
		}
		if tmpl != nil {
			c.Template = tmpl(t)
		}
		return c
	}
}

func withJane(t testing.TB) Agent {
	return Agent{Login: "jane", Name: "Jane Doe", Signature: janeSignature(t)}
}
func noSignature(t testing.TB) Agent { return Agent{Login: "bob", Name: "Bob"} }

const baseHeader = "Received: from agent-app by mailgate; Sat, 14 Mar 2026 15:09:00 +0000\r\n" +
	"From: Agent App <support@shop.example.com>\r\n" +
	"To: Customer <customer@example.org>\r\n" +
	"X-CRM-Case: 77\r\n"

func goldenCases() []goldenCase {
	png := newAttachment(1, 3000)
	pdf := newAttachment(2, 5000)
	logo := newAttachment(3, 700)
	var cases []goldenCase

	cases = append(cases, goldenCase{
		name:        "text-only",
		channel:     channel(TicketFormat{}, nil),
		agent:       withJane,
		input:       baseHeader + "Subject: Your order\r\nX-Mailgate-Ticket: 123456\r\nX-Mailgate-Agent: jane\r\n\r\nHello,\r\n\r\nyour order has shipped.\r\n",
		subject:     "Your order 123456",
		displayName: "Example Shop Support",
		structure:   []string{"text/plain"},
		textOrder:   []string{"your order has shipped.", "Jane Doe\nCustomer Support"},
		ticket:      "123456", reply: true,
	})
	cases = append(cases, goldenCase{
		name:        "text-only-template",
		channel:     channel(TicketFormat{Style: StyleBrackets}, brandTemplate),
		agent:       withJane,
		input:       baseHeader + "Subject: Your order\r\nX-Mailgate-Ticket: 123456\r\n\r\nHello,\r\n\r\n<your> order & more.\r\n",
		subject:     "Your order [#123456]",
		displayName: "Example Shop Support",
		structure:   []string{"multipart/alternative", "text/plain", "text/html"},
		textOrder:   []string{"<your> order & more.", "Jane Doe"},
		htmlOrder:   []string{`<h1>Example Shop Support</h1>`, "&lt;your&gt; order &amp; more.", "<b>Jane Doe</b>", "Ticket 123456 · Sent by Jane Doe"},
		ticket:      "123456", reply: true,
	})
	cases = append(cases, goldenCase{
		name:    "html-only",
		channel: channel(TicketFormat{Style: StyleBraces, Position: PositionStart}, brandTemplate),
		agent:   withJane,
		input: baseHeader + "Subject: Re: Refund\r\nX-Mailgate-Ticket: 42\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
			base64Lines(`<html><head><style>p{color:#333}</style></head><body><p>Your refund is <i>on its way</i>.</p></body></html>`),
		subject:     "Re: {#42} Refund",
		displayName: "Example Shop Support",
		// HTML alone gets a text alternative read from it, with the plain signature.
		structure: []string{"multipart/alternative", "text/plain", "text/html"},
		textOrder: []string{"Your refund is on its way.", "Jane Doe"},
		htmlOrder: []string{"<style>p{color:#333}</style>", "<p>Your refund is <i>on its way</i>.</p>", "<b>Jane Doe</b>", "Ticket 42"},
		ticket:    "42", reply: true,
	})
	cases = append(cases, goldenCase{
		name:    "alternative",
		channel: channel(TicketFormat{Style: StyleHidden}, brandTemplateWithText),
		agent:   withJane,
		input: baseHeader + "Subject: Delivery\r\nX-Mailgate-Ticket: 9001\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"alt-1\"\r\n\r\n" +
			"This is a multi-part message in MIME format.\r\n--alt-1\r\nContent-Type: text/plain; charset=\"iso-8859-1\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe aus M=FCnchen\r\n" +
			"--alt-1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Grüße aus München</p>\r\n--alt-1--\r\n",
		subject:     "Delivery",
		displayName: "Example Shop Support",
		structure:   []string{"multipart/alternative", "text/plain", "text/html"},
		textOrder:   []string{"Example Shop Support\n==========", "Grüße aus München", "Jane Doe", "Ticket 9001"},
		htmlOrder:   []string{`<div class="brand">Example Shop Support</div>`, "<p>Grüße aus München</p>", "<b>Jane Doe</b>"},
		ticket:      "9001", reply: true,
	})
	cases = append(cases, goldenCase{
		name:    "mixed-attachments",
		channel: channel(TicketFormat{Style: StyleBrackets}, brandTemplate, ".png", ".PDF"),
		agent:   withJane,
		input: baseHeader + "Subject: Invoice\r\nX-Mailgate-Ticket: 555\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n" +
			"--mix\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease find the invoice attached.\r\n" +
			"--mix\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\nContent-Disposition: attachment; filename=\"invoice.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + pdf.b64() + "\r\n" +
			"--mix\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename*=UTF-8''%E5%86%99%E7%9C%9F.png\r\nContent-Transfer-Encoding: base64\r\n\r\n" + png.b64() + "\r\n" +
			"--mix--\r\n",
		subject:     "Invoice [#555]",
		displayName: "Example Shop Support",
		structure:   []string{"multipart/mixed", "multipart/alternative", "text/plain", "text/html", "application/pdf", "image/png"},
		attachments: map[string]string{"invoice.pdf": pdf.sha(), "写真.png": png.sha()},
		textOrder:   []string{"Please find the invoice attached.", "Jane Doe"},
		htmlOrder:   []string{"Please find the invoice attached.", "<b>Jane Doe</b>"},
		ticket:      "555", reply: true,
	})
	cases = append(cases, goldenCase{
		name:    "inline-cid",
		channel: channel(TicketFormat{Position: PositionStart}, brandTemplate, ".png", ".pdf"),
		agent:   withJane,
		input: baseHeader + "Subject: Our new logo\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"m\"\r\n\r\n" +
			"--m\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n" +
			"--a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee our logo.\r\n" +
			"--a\r\nContent-Type: multipart/related; boundary=\"r\"\r\n\r\n" +
			"--r\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>See our <img src=\"cid:logo@shop\"> logo.</p>\r\n" +
			"--r\r\nContent-Type: image/png\r\nContent-ID: <logo@shop>\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: base64\r\n\r\n" + logo.b64() + "\r\n" +
			"--r--\r\n\r\n--a--\r\n\r\n" +
			"--m\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"brand.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + pdf.b64() + "\r\n" +
			"--m--\r\n",
		subject:     "Our new logo",
		displayName: "Example Shop Support",
		structure:   []string{"multipart/mixed", "multipart/alternative", "text/plain", "multipart/related", "text/html", "image/png", "application/pdf"},
		attachments: map[string]string{"brand.pdf": pdf.sha(), "cid:logo@shop": logo.sha()},
		textOrder:   []string{"See our logo.", "Jane Doe"},
		htmlOrder:   []string{`<img src="cid:logo@shop">`, "<b>Jane Doe</b>"},
	})
	cases = append(cases, goldenCase{
		name: "non-ascii",
		channel: func(t testing.TB) *Channel {
			c := channel(TicketFormat{Style: StyleBrackets}, nil)(t)
			c.DisplayName = "Kundenservice Zoë @ Société Générale, Paris"
			return c
		},
		agent: withJane,
		input: baseHeader + "Subject: =?utf-8?q?Ihre_Anfrage_zu_Gr=C3=B6=C3=9Fe_und_Lieferung?= =?utf-8?b?IOOBiuWVj+OBhOWQiOOCj+OBmw==?= und eine sehr lange Betreffzeile, die gefaltet werden muss\r\n" +
			"X-Mailgate-Ticket: 31415926\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nDanke für Ihre Geduld — 日本語も大丈夫です。\r\n",
		subject:     "Ihre Anfrage zu Größe und Lieferung お問い合わせ und eine sehr lange Betreffzeile, die gefaltet werden muss [#31415926]",
		displayName: "Kundenservice Zoë @ Société Générale, Paris",
		structure:   []string{"text/plain"},
		textOrder:   []string{"Danke für Ihre Geduld — 日本語も大丈夫です。", "Jane Doe"},
		ticket:      "31415926", reply: true,
	})
	cases = append(cases, goldenCase{
		name: "ascii-specials-display-name",
		channel: func(t testing.TB) *Channel {
			c := channel(TicketFormat{}, nil)(t)
			c.DisplayName = `Support "24/7" @ Shop, Inc.`
			return c
		},
		agent:       noSignature,
		input:       baseHeader + "Subject: Hi\r\n\r\nHi.\r\n",
		subject:     "Hi",
		displayName: `Support "24/7" @ Shop, Inc.`,
		structure:   []string{"text/plain"},
		textHas:     []string{"Hi."},
	})
	for _, st := range []Style{StylePlain, StyleBrackets, StyleBraces, StyleHidden} {
		for _, pos := range []Position{PositionEnd, PositionStart} {
			f := TicketFormat{Style: st, Position: pos}
			want := map[Style]string{StylePlain: "123456", StyleBrackets: "[#123456]", StyleBraces: "{#123456}", StyleHidden: ""}[st]
			subj := "Re: Help with my order"
			if want != "" && pos == PositionEnd {
				subj = "Re: Help with my order " + want
			} else if want != "" {
				subj = "Re: " + want + " Help with my order"
			}
			cases = append(cases, goldenCase{
				name:    fmt.Sprintf("ticket-%s-%s", st, pos),
				channel: channel(f, nil),
				agent:   noSignature,
				// A reply chain: the tag in some style, several prefixes, and the header.
				input:       baseHeader + "Subject: RE: Re: [#123456] Help with my order 123456\r\nX-Mailgate-Ticket: 123456\r\nIn-Reply-To: <abc@example.org>\r\n\r\nThanks.\r\n",
				subject:     strings.Replace(subj, "Re:", "RE:", 1),
				displayName: "Example Shop Support",
				structure:   []string{"text/plain"},
				textHas:     []string{"Thanks."},
				ticket:      "123456", reply: true,
			})
		}
	}
	cases = append(cases, goldenCase{
		name:    "reply-chain",
		channel: channel(TicketFormat{Style: StyleBrackets}, nil),
		agent:   withJane,
		input: baseHeader + "Subject: Re: Re: AW: Fwd: Broken item [#123456] [#123456]\r\nIn-Reply-To: <c3@example.org>\r\nReferences: <c1@example.org>\r\n <c2@example.org> <c3@example.org>\r\nMessage-ID: <client-generated@agent-app>\r\n" +
			"Content-Type: text/plain; charset=utf-8\r\n\r\nWe are sending a replacement.\r\n\r\n-----Original Message-----\r\nFrom: Customer\r\n\r\nIt arrived broken.\r\n",
		subject:     "Re: Broken item [#123456]",
		displayName: "Example Shop Support",
		structure:   []string{"text/plain"},
		textOrder:   []string{"We are sending a replacement.", "Jane Doe\nCustomer Support", "-----Original Message-----", "It arrived broken."},
		ticket:      "123456", reply: true,
	})
	cases = append(cases, goldenCase{
		name:    "quoted-html",
		channel: channel(TicketFormat{Style: StyleBrackets}, brandTemplate),
		agent:   withJane,
		input: baseHeader + "Subject: Re: Question\r\nX-Mailgate-Ticket: 777\r\nIn-Reply-To: <q@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n" +
			"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nYes, that works.\r\n\r\nOn Fri, 13 Mar 2026 at 10:00, Customer <customer@example.org>\r\nwrote:\r\n> Does it work?\r\n" +
			"--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<html><body><p>Yes, that works.</p><div class=3D\"moz-cite-prefix\">On Fri, 13 Mar 2026 at 10:00, Customer wrote:<br></div>=\r\n<blockquote type=3D\"cite\"><p>Does it work?</p></blockquote></body></html>\r\n--b--\r\n",
		subject:     "Re: Question [#777]",
		displayName: "Example Shop Support",
		structure:   []string{"multipart/alternative", "text/plain", "text/html"},
		textOrder:   []string{"Yes, that works.", "Jane Doe", "On Fri, 13 Mar 2026", "> Does it work?"},
		htmlOrder:   []string{"<p>Yes, that works.</p>", "<b>Jane Doe</b>", `<div class="moz-cite-prefix">On Fri`, `<blockquote type="cite">`, "Ticket 777"},
		ticket:      "777", reply: true,
	})
	cases = append(cases, goldenCase{
		name:    "forwarded-message",
		channel: channel(TicketFormat{}, nil, ".png", ".eml"),
		agent:   withJane,
		input: baseHeader + "Subject: FYI\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"o\"\r\n\r\n" +
			"--o\r\nContent-Type: text/plain\r\n\r\nForwarding the original.\r\n" +
			"--o\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"original.eml\"\r\n\r\n" +
			"From: x@example.org\r\nSubject: original\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"i\"\r\n\r\n--i\r\nContent-Type: text/plain\r\n\r\ninner text\r\n" +
			"--i\r\nContent-Type: image/png; name=\"inner.png\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + logo.b64() + "\r\n--i--\r\n" +
			"\r\n--o--\r\n",
		subject:     "FYI",
		displayName: "Example Shop Support",
		structure:   []string{"multipart/mixed", "text/plain", "message/rfc822", "multipart/mixed", "text/plain", "image/png"},
		attachments: map[string]string{"inner.png": logo.sha()},
		textOrder:   []string{"Forwarding the original.", "Jane Doe"},
	})
	return cases
}

func base64Lines(s string) string { return attachment{data: []byte(s)}.b64() + "\r\n" }

// pyCheck parses every file with Python's stdlib email package (policy.default) and reports what it
// sees: headers, structure, defects, bodies and attachment digests.
const pyCheck = `
import email, email.policy, hashlib, json, sys
out = {}
for path in sys.argv[1:]:
    with open(path, 'rb') as f:
        msg = email.message_from_bytes(f.read(), policy=email.policy.default)
    r = {'structure': [], 'defects': [], 'attachments': {}, 'text': None, 'html': None}
    frm = msg['From']
    r['from_name'] = frm.addresses[0].display_name
    r['from_addr'] = frm.addresses[0].addr_spec
    r['subject'] = str(msg['Subject'] or '')
    for h in ('Message-ID', 'Date', 'In-Reply-To', 'References', 'X-Mailgate-Ticket', 'X-Mailgate-Agent', 'X-CRM-Case', 'Bcc'):
        v = msg[h]
        r[h] = None if v is None else str(v)
    r['date_offset'] = msg['Date'].datetime.utcoffset().total_seconds() if msg['Date'] else None
    r['keys'] = list(msg.keys())
    for part in msg.walk():
        r['structure'].append(part.get_content_type())
        r['defects'] += [type(d).__name__ for d in part.defects]
        ct = part.get_content_type()
        if part.is_multipart() or ct.startswith('message/'):
            continue
        name = part.get_filename() or (part['Content-ID'] and 'cid:' + part['Content-ID'].strip('<>'))
        if name:
            r['attachments'][name] = hashlib.sha256(part.get_payload(decode=True)).hexdigest()
        elif ct == 'text/plain' and r['text'] is None:
            r['text'] = part.get_content()
        elif ct == 'text/html' and r['html'] is None:
            r['html'] = part.get_content()
    out[path] = r
print(json.dumps(out))
`

type pyResult struct {
	FromName    string            `json:"from_name"`
	FromAddr    string            `json:"from_addr"`
	Subject     string            `json:"subject"`
	Structure   []string          `json:"structure"`
	Defects     []string          `json:"defects"`
	Attachments map[string]string `json:"attachments"`
	Text        *string           `json:"text"`
	HTML        *string           `json:"html"`
	MessageID   *string           `json:"Message-ID"`
	Date        *string           `json:"Date"`
	DateOffset  *float64          `json:"date_offset"`
	InReplyTo   *string           `json:"In-Reply-To"`
	References  *string           `json:"References"`
	Ticket      *string           `json:"X-Mailgate-Ticket"`
	Agent       *string           `json:"X-Mailgate-Agent"`
	CRMCase     *string           `json:"X-CRM-Case"`
	Keys        []string          `json:"keys"`
}

func TestGolden(t *testing.T) {
	cases := goldenCases()
	dir := filepath.Join("testdata", "golden")
	if *update {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var paths []string
	results := map[string]Result{}
	for i, c := range cases {
		c := c
		var out bytes.Buffer
		comp := New(Options{Rand: seeded(uint64(100 + i))})
		res, err := comp.Compose(context.Background(), strings.NewReader(c.input), &out,
			Request{Channel: c.channel(t), Agent: c.agent(t), Now: fixedNow})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if res.Size != int64(out.Len()) {
			t.Errorf("%s: Size %d, wrote %d", c.name, res.Size, out.Len())
		}
		results[c.name] = res
		path := filepath.Join(dir, c.name+".eml")
		if *update {
			if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		} else {
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%s: %v (run go test -run TestGolden -update)", c.name, err)
			}
			if !bytes.Equal(want, out.Bytes()) {
				t.Errorf("%s: output differs from %s:\n%s", c.name, path, out.String())
			}
		}
		paths = append(paths, path)
		if bytes.Contains(out.Bytes(), []byte("\n")) && bytes.Count(out.Bytes(), []byte("\r\n")) != bytes.Count(out.Bytes(), []byte("\n")) {
			t.Errorf("%s: bare LF in output", c.name)
		}
	}
	if t.Failed() {
		return
	}

	var parsed map[string]pyResult
	raw := peertest.Python(t, pyCheck, paths...)
	if err := json.Unmarshal([]byte(raw), &parsed); err != nil {
		t.Fatalf("python output: %v\n%s", err, raw)
	}
	for _, c := range cases {
		path := filepath.Join(dir, c.name+".eml")
		p, ok := parsed[path]
		if !ok {
			t.Fatalf("%s: python did not report it", c.name)
		}
		res := results[c.name]
		t.Run(c.name, func(t *testing.T) {
			if len(p.Defects) > 0 {
				t.Errorf("python found defects: %v", p.Defects)
			}
			if p.Subject != c.subject {
				t.Errorf("subject %q, want %q", p.Subject, c.subject)
			}
			if res.Subject != c.subject {
				t.Errorf("Result.Subject %q, want %q", res.Subject, c.subject)
			}
			// Python's address parser puts a space between adjacent encoded-words of a display name
			// (RFC 2047 §6.2 says to ignore it), so a long encoded name compares with spaces collapsed.
			if strings.Join(strings.Fields(p.FromName), " ") != c.displayName || p.FromAddr != "support@shop.example.com" {
				t.Errorf("From %q <%s>, want %q", p.FromName, p.FromAddr, c.displayName)
			}
			if strings.Join(p.Structure, " ") != strings.Join(c.structure, " ") {
				t.Errorf("structure %v, want %v", p.Structure, c.structure)
			}
			if len(p.Attachments) != len(c.attachments) {
				t.Errorf("attachments %v, want %v", p.Attachments, c.attachments)
			}
			for name, sum := range c.attachments {
				if p.Attachments[name] != sum {
					t.Errorf("attachment %q: python sha256 %s, input's %s", name, p.Attachments[name], sum)
				}
			}
			if p.MessageID == nil || *p.MessageID != "<"+res.MessageID+">" || !strings.HasSuffix(res.MessageID, "@shop.example.com") {
				t.Errorf("Message-ID %v, Result %q", p.MessageID, res.MessageID)
			}
			if c.ticket != "" && !strings.HasPrefix(res.MessageID, "t"+c.ticket+".") {
				t.Errorf("Message-ID %q does not carry ticket %s", res.MessageID, c.ticket)
			}
			if res.Ticket != c.ticket || res.Reply != c.reply {
				t.Errorf("Result ticket %q reply %v, want %q %v", res.Ticket, res.Reply, c.ticket, c.reply)
			}
			// Europe/Berlin in March 2026 (before DST on the 29th) is +01:00.
			if p.DateOffset == nil || *p.DateOffset != 3600 {
				t.Errorf("Date %v offset %v, want +0100", p.Date, p.DateOffset)
			}
			if p.Ticket != nil || p.Agent != nil {
				t.Errorf("X-Mailgate-* headers left: %v %v", p.Ticket, p.Agent)
			}
			if p.CRMCase == nil || *p.CRMCase != "77" {
				t.Errorf("foreign header X-CRM-Case lost: %v", p.CRMCase)
			}
			if strings.Contains(c.input, "In-Reply-To:") && p.InReplyTo == nil {
				t.Error("In-Reply-To lost")
			}
			if strings.Contains(c.input, "References:") && (p.References == nil || !strings.Contains(*p.References, "<c2@example.org>")) {
				t.Errorf("References lost: %v", p.References)
			}
			text := strings.ReplaceAll(deref(p.Text), "\r\n", "\n")
			html := strings.ReplaceAll(deref(p.HTML), "\r\n", "\n")
			for _, s := range c.textHas {
				if !strings.Contains(text, s) {
					t.Errorf("text lacks %q:\n%s", s, text)
				}
			}
			for _, s := range c.htmlHas {
				if !strings.Contains(html, s) {
					t.Errorf("html lacks %q:\n%s", s, html)
				}
			}
			inOrder(t, "text", text, c.textOrder)
			inOrder(t, "html", html, c.htmlOrder)
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func inOrder(t *testing.T, what, s string, subs []string) {
	t.Helper()
	at := 0
	for _, sub := range subs {
		i := strings.Index(s[at:], sub)
		if i < 0 {
			t.Errorf("%s lacks %q after offset %d:\n%s", what, sub, at, s)
			return
		}
		at += i + len(sub)
	}
}
