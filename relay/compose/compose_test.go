package compose

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
	"syscall"
	"testing"

	"github.com/emersion/go-message/textproto"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/signatures"
)

func compose(t testing.TB, ch *Channel, agent Agent, in string) (string, Result, error) {
	t.Helper()
	var out bytes.Buffer
	res, err := New(Options{Rand: seeded(7)}).Compose(context.Background(), strings.NewReader(in), &out,
		Request{Channel: ch, Agent: agent, Now: fixedNow})
	return out.String(), res, err
}

func wantRelayError(t *testing.T, err error, code int, enhanced relay.EnhancedCode, reason string, msgHas ...string) {
	t.Helper()
	re, ok := relay.AsError(err)
	if !ok {
		t.Fatalf("error %v (%T), want *relay.Error %d", err, err, code)
	}
	if re.Code != code || re.Enhanced != enhanced || (reason != "" && re.Reason != reason) {
		t.Fatalf("got %d %s reason %q (%v), want %d %s %q", re.Code, re.Enhanced, re.Reason, re, code, enhanced, reason)
	}
	for _, s := range msgHas {
		if !strings.Contains(re.Msg, s) {
			t.Errorf("message %q lacks %q", re.Msg, s)
		}
	}
}

func mixedWith(partHeader string, body string) string {
	return baseHeader + "Subject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"z\"\r\n\r\n" +
		"--z\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
		"--z\r\n" + partHeader + "\r\n" + body + "\r\n--z--\r\n"
}

func TestAttachmentPolicy(t *testing.T) {
	ch := channel(TicketFormat{}, nil, ".png", ".pdf")(t)
	png := newAttachment(9, 300).b64()
	cases := []struct {
		name, header, body string
		refusedExt         string // "" = accepted
	}{
		{"filename ok", "Content-Type: image/png\r\nContent-Disposition: attachment; filename=\"a.PNG\"\r\nContent-Transfer-Encoding: base64\r\n", png, ""},
		{"filename refused", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"setup.exe\"\r\n", "MZ", ".exe"},
		{"rfc2231 filename*", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.docx\r\n", "x", ".docx"},
		{"rfc2231 continuation", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment;\r\n filename*0=\"quarterly-\";\r\n filename*1=\"report.xlsm\"\r\n", "x", ".xlsm"},
		{"content-type name", "Content-Type: application/x-msdownload; name=\"tool.bat\"\r\n", "x", ".bat"},
		{"encoded-word name", "Content-Type: application/octet-stream; name=\"=?utf-8?b?ZXZpbC5qcw==?=\"\r\n", "x", ".js"},
		{"trailing dot", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"invoice.pdf.exe.\"\r\n", "x", ".exe"},
		{"no extension", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"README\"\r\n", "x", "README"},
		{"nameless inline image ok", "Content-Type: image/png\r\nContent-ID: <i1>\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: base64\r\n", png, ""},
		{"nameless inline gif refused", "Content-Type: image/gif\r\nContent-ID: <i2>\r\nContent-Disposition: inline\r\n", "GIF89a", ".gif"},
		{"nameless unknown type refused", "Content-Type: application/x-thing\r\n", "x", "application/x-thing"},
		{"text attachment refused", "Content-Type: text/plain\r\nContent-Disposition: attachment\r\n", "notes", ".txt"},
		{"broken quoting still checked", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"bad name.vbs; size=3\r\n", "x", ".vbs"},
		{"nested message refused inside", "Content-Type: message/rfc822\r\n",
			"From: a@b\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"in\"\r\n\r\n--in\r\nContent-Type: text/plain\r\n\r\nhi\r\n--in\r\nContent-Type: application/octet-stream; name=\"payload.scr\"\r\n\r\nx\r\n--in--\r\n", ".scr"},
		{"nested message accepted", "Content-Type: message/rfc822\r\n",
			"From: a@b\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"in\"\r\n\r\n--in\r\nContent-Type: text/plain\r\n\r\nhi\r\n--in\r\nContent-Type: application/pdf; name=\"ok.pdf\"\r\n\r\nx\r\n--in--\r\n", ""},
		{"doubly nested message", "Content-Type: message/rfc822\r\n",
			"From: a@b\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\nFrom: c@d\r\nContent-Type: application/java-archive; name=\"x.jar\"\r\n\r\nPK\r\n", ".jar"},
		{"base64 message/rfc822", "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n",
			base64Lines("From: a@b\r\nContent-Type: application/octet-stream; name=\"m.iso\"\r\n\r\nx\r\n"), ".iso"},
		{"named eml refused", "Content-Type: message/rfc822\r\nContent-Disposition: attachment; filename=\"fwd.eml\"\r\n", "From: a@b\r\n\r\nhi\r\n", ".eml"},
		{"nested multipart inside attachment", "Content-Type: multipart/mixed; boundary=\"q\"\r\n",
			"--q\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n\r\nx\r\n--q\r\nContent-Type: application/octet-stream; name=\"b.ps1\"\r\n\r\nx\r\n--q--", ".ps1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := mixedWith(c.header, c.body)
			out, _, err := compose(t, ch, noSignature(t), in)
			if c.refusedExt == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				// The attachment passes byte for byte: header and body.
				if !strings.Contains(out, "--z\r\n"+c.header+"\r\n"+c.body+"\r\n--z--") {
					t.Errorf("attachment not passed byte-identical:\n%s", out)
				}
				return
			}
			wantRelayError(t, err, 550, relay.CodePolicy, "attachment", c.refusedExt)
		})
	}

	t.Run("empty list allows all", func(t *testing.T) {
		open := channel(TicketFormat{}, nil)(t)
		in := mixedWith("Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"setup.exe\"\r\n", "MZ")
		if _, _, err := compose(t, open, noSignature(t), in); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("top-level attachment", func(t *testing.T) {
		in := baseHeader + "Subject: x\r\nContent-Type: application/zip; name=\"a.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\nUEsDBA==\r\n"
		_, _, err := compose(t, ch, noSignature(t), in)
		wantRelayError(t, err, 550, relay.CodePolicy, "attachment", ".zip")
	})
}

func TestSizeLimit(t *testing.T) {
	ch := channel(TicketFormat{}, brandTemplate)(t)
	big := newAttachment(4, 200<<10).b64()
	in := mixedWith("Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"big.pdf\"\r\nContent-Transfer-Encoding: base64\r\n", big)
	out, res, err := compose(t, ch, withJane(t), in)
	if err != nil {
		t.Fatal(err)
	}
	full := res.Size
	if full != int64(len(out)) {
		t.Fatalf("Size %d, output %d", full, len(out))
	}

	t.Run("exactly at the limit", func(t *testing.T) {
		ch.MaxMessageBytes = full
		if _, _, err := compose(t, ch, withJane(t), in); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("one byte over", func(t *testing.T) {
		ch.MaxMessageBytes = full - 1
		_, _, err := compose(t, ch, withJane(t), in)
		wantRelayError(t, err, 552, relay.CodeTooBig, "size", "after composition")
	})
	t.Run("stops while streaming", func(t *testing.T) {
		// The input is far larger than the limit; composition must stop soon after the limit and
		// not read (or write) the rest.
		ch.MaxMessageBytes = 64 << 10
		src := &countingReader{r: strings.NewReader(in)}
		w := &countingWriter{}
		_, err := New(Options{}).Compose(context.Background(), src, w, Request{Channel: ch, Agent: withJane(t), Now: fixedNow})
		wantRelayError(t, err, 552, relay.CodeTooBig, "size")
		if w.n > ch.MaxMessageBytes {
			t.Errorf("wrote %d bytes past a %d limit", w.n, ch.MaxMessageBytes)
		}
		if src.n > int64(len(in))/2 {
			t.Errorf("read %d of %d input bytes after the limit was hit", src.n, len(in))
		}
	})
	t.Run("body part over MaxBodyBytes", func(t *testing.T) {
		ch.MaxMessageBytes = 0
		in := baseHeader + "Subject: long\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 1000)
		var out bytes.Buffer
		_, err := New(Options{MaxBodyBytes: 8 << 10}).Compose(context.Background(), strings.NewReader(in), &out,
			Request{Channel: ch, Agent: withJane(t), Now: fixedNow})
		wantRelayError(t, err, 552, relay.CodeTooBig, "size", "text/plain")
	})
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type countingWriter struct{ n int64 }

func (c *countingWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func TestMalformed(t *testing.T) {
	ch := channel(TicketFormat{}, brandTemplate, ".pdf")(t)
	cases := map[string]string{
		"bad header line":           "From a@b\r\nSubject: x\r\n\r\nbody\r\n",
		"multipart no boundary":     baseHeader + "Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n",
		"multipart boundary absent": baseHeader + "Content-Type: multipart/mixed; boundary=\"q\"\r\n\r\nno parts here\r\n",
		"unterminated multipart":    baseHeader + "Content-Type: multipart/mixed; boundary=\"q\"\r\n\r\n--q\r\nContent-Type: text/plain\r\n\r\nhi\r\n",
		"bad transfer encoding":     baseHeader + "Content-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n",
		"bad base64 body":           baseHeader + "Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!not base64!!!\r\n",
		"unknown charset":           baseHeader + "Content-Type: text/plain; charset=x-klingon\r\n\r\nqapla\r\n",
		"bad ticket header":         baseHeader + "X-Mailgate-Ticket: 12ab\r\n\r\nhi\r\n",
		"malformed content-type":    baseHeader + "Content-Type: text/\r\n\r\nhi\r\n",
		"too deep":                  baseHeader + deepMultipart(40),
		"malformed nested message":  mixedWith("Content-Type: message/rfc822\r\n", " leading space header\r\n\r\nx"),
		"very long line":            baseHeader + "Subject: " + strings.Repeat("x", 2<<20) + "\r\n\r\nhi\r\n",
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := compose(t, ch, withJane(t), in)
			wantRelayError(t, err, 554, relay.CodeMalformed, "malformed")
		})
	}
}

// fullDisk accepts n bytes, then fails as a full file system does.
type fullDisk struct{ n int }

func (d *fullDisk) Write(p []byte) (int, error) {
	if len(p) > d.n {
		w := d.n
		d.n = 0
		return w, fmt.Errorf("write spool: %w", syscall.ENOSPC)
	}
	d.n -= len(p)
	return len(p), nil
}

// TestOutputFailureIsTemporary: a write failure of the composed output — in the middle, or only at the
// final flush of a small message — is mailgate's (451, errno kept for the reply boundary), never "554
// 5.6.0 malformed": an agent must not be told its message is broken because the disk is full.
func TestOutputFailureIsTemporary(t *testing.T) {
	ch := channel(TicketFormat{}, brandTemplate, "")(t)
	for name, lines := range map[string]int{"at the final flush": 10, "mid-message": 8 << 10} {
		t.Run(name, func(t *testing.T) {
			body := baseHeader + "Subject: hi\r\n\r\n" + strings.Repeat("hello there\r\n", lines)
			_, err := New(Options{Rand: seeded(7)}).Compose(context.Background(), strings.NewReader(body), &fullDisk{n: 1000},
				Request{Channel: ch, Agent: withJane(t), Now: fixedNow})
			wantRelayError(t, err, 451, relay.CodeTempLocal, "local")
			if !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("ENOSPC lost from %v", err)
			}
		})
	}
}

func deepMultipart(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		b.WriteString("Content-Type: multipart/mixed; boundary=\"b" + string(rune('a'+i%26)) + strings.Repeat("x", i) + "\"\r\n\r\n--b" + string(rune('a'+i%26)) + strings.Repeat("x", i) + "\r\n")
	}
	b.WriteString("Content-Type: text/plain\r\n\r\nhi\r\n")
	return b.String()
}

func TestHeaderFidelity(t *testing.T) {
	ch := channel(TicketFormat{Style: StyleBrackets}, nil)(t)
	in := "Return-Path: <bounce@agent-app>\r\n" +
		"Received: from a\r\n\tby b; Sat, 14 Mar 2026 15:09:00 +0000\r\n" +
		"From:   \"Somebody\"   <support@shop.example.com>\r\n" +
		"X-Mailgate-Ticket: 4242\r\n" +
		"x-mailgate-agent: jane\r\n" +
		"X-MAILGATE-Control: no-track\r\n" +
		"To: a@example.org,\r\n  b@example.org\r\n" +
		"Bcc: hidden@example.org\r\n" +
		"Sender: someone-else@example.net\r\n" +
		"X-Mailer: CRM Desk 7.3.1 (build 2211)\r\n" +
		"user-agent: AgentApp/2.0\r\n" +
		"Subject: Status [#4242]\r\n" +
		"Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n" +
		"Message-ID: <client@agent-app>\r\n" +
		"X-Odd-Spacing:value-without-space\r\n" +
		"Keywords: a,\r\n b\r\n" +
		"\r\n" +
		"body\r\n"
	out, res, err := compose(t, ch, noSignature(t), in)
	if err != nil {
		t.Fatal(err)
	}
	want := "From: Example Shop Support <support@shop.example.com>\r\n" +
		"To: a@example.org,\r\n  b@example.org\r\n" +
		"Subject: Status [#4242]\r\n" +
		"Date: Sat, 14 Mar 2026 16:09:26 +0100\r\n" +
		"Message-ID: <" + res.MessageID + ">\r\n" +
		"X-Odd-Spacing:value-without-space\r\n" +
		"Keywords: a,\r\n b\r\n" +
		"\r\n" +
		"body\r\n"
	if out != want {
		t.Errorf("got:\n%s\nwant:\n%s", out, want)
	}
	if res.Ticket != "4242" || !res.Reply {
		t.Errorf("result %+v", res)
	}
}

// Resent-* fields are refused, whatever their case: mailgate does not resend.
func TestResentRefused(t *testing.T) {
	ch := channel(TicketFormat{}, nil)(t)
	for _, field := range []string{"Resent-From: boss@shop.example.com", "resent-to: x@example.org", "RESENT-SENDER: a@b.example"} {
		_, _, err := compose(t, ch, noSignature(t), "From: support@shop.example.com\r\n"+field+"\r\nSubject: x\r\n\r\nbody\r\n")
		re, ok := relay.AsError(err)
		if !ok || re.Code != 550 || re.Enhanced != relay.CodePolicy || !strings.Contains(re.Msg, "not allowed") {
			t.Errorf("%s: %v", field, err)
		}
	}
}

func TestLongSubjectFolded(t *testing.T) {
	ch := channel(TicketFormat{}, nil)(t)
	long := strings.Repeat("Überweisung ", 30) + "https://example.org/" + strings.Repeat("p", 200)
	in := baseHeader + "Subject: x\r\nX-Mailgate-Ticket: 1\r\n\r\nhi\r\n"
	in = strings.Replace(in, "Subject: x", "Subject: "+EncodeUnstructured(long), 1)
	out, res, err := compose(t, ch, noSignature(t), in)
	if err != nil {
		t.Fatal(err)
	}
	h, err := textproto.ReadHeader(bufioReader(out))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := h.Raw("Subject")
	for _, line := range strings.Split(strings.TrimSuffix(string(raw), "\r\n"), "\r\n") {
		if len(line) > 78 {
			t.Errorf("Subject line of %d characters: %q", len(line), line)
		}
	}
	if res.Subject != strings.Join(strings.Fields(long), " ")+" 1" {
		t.Errorf("subject %q", res.Subject)
	}
	if got := decodeWords(t, h.Get("Subject")); got != res.Subject {
		t.Errorf("decoded %q, want %q", got, res.Subject)
	}
}

func TestReplyDetection(t *testing.T) {
	cases := []struct {
		name      string
		threading Threading
		extra     string
		subject   string
		reply     bool
		ticket    string
	}{
		{"new outbound", "", "", "Hello", false, ""},
		{"in-reply-to", "", "In-Reply-To: <x@y>\r\n", "Hello", true, ""},
		{"references", "", "References: <x@y>\r\n", "Hello", true, ""},
		{"ticket header", "", "X-Mailgate-Ticket: 12\r\n", "Hello", true, "12"},
		{"ticket tag in subject", "", "", "Re: Hello {#99}", true, "99"},
		{"plain number is no ticket", "", "", "Invoice 2024", false, ""},
		{"ignore in-reply-to", IgnoreInReplyTo, "In-Reply-To: <x@y>\r\n", "Hello", false, ""},
		{"ignore in-reply-to with ticket", IgnoreInReplyTo, "In-Reply-To: <x@y>\r\n", "Hello [#5]", true, "5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ch := channel(TicketFormat{}, nil)(t)
			ch.Threading = c.threading
			_, res, err := compose(t, ch, noSignature(t), baseHeader+"Subject: "+c.subject+"\r\n"+c.extra+"\r\nhi\r\n")
			if err != nil {
				t.Fatal(err)
			}
			if res.Reply != c.reply || res.Ticket != c.ticket {
				t.Errorf("reply %v ticket %q, want %v %q", res.Reply, res.Ticket, c.reply, c.ticket)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ok := &Channel{FromAddress: "a@example.com", Ticket: TicketFormat{Style: StyleBraces, Position: PositionStart}, Threading: IgnoreInReplyTo, AllowedExtensions: []string{".png", "PDF"}}
	if errs := ok.Validate(); len(errs) != 0 {
		t.Errorf("valid channel: %v", errs)
	}
	bad := &Channel{FromAddress: "Support <a@example.com>", Ticket: TicketFormat{Style: StyleHidden, Position: "middle"}, Threading: IgnoreInReplyTo, AllowedExtensions: []string{".png", "*.exe"}}
	errs := bad.Validate()
	var fields []string
	for _, e := range errs {
		var fe *FieldError
		if !errors.As(e, &fe) {
			t.Fatalf("%T is not a FieldError", e)
		}
		fields = append(fields, fe.Field)
	}
	if strings.Join(fields, " ") != "from_address ticket.position threading allowed_extensions[1]" {
		t.Errorf("fields %v: %v", fields, errs)
	}
	if errs := (TicketFormat{Style: "curly"}).Validate(""); len(errs) != 1 || !strings.Contains(errs[0].Error(), "plain, brackets, braces, hidden") {
		t.Errorf("style error: %v", errs)
	}
	if errs := (TicketFormat{Style: StyleHidden}).Validate(PreferInReplyTo); len(errs) != 0 {
		t.Errorf("hidden + prefer: %v", errs)
	}
}

func TestSignatureWithoutTemplate(t *testing.T) {
	// An HTML-only message, a signature given only as text: its derived HTML form goes in.
	sig, err := signatures.New("s", "Bob <support>\nhttps://shop.example.com", "")
	if err != nil {
		t.Fatal(err)
	}
	ch := channel(TicketFormat{}, nil)(t)
	in := baseHeader + "Subject: x\r\nContent-Type: text/html\r\n\r\n<html><body><p>Hi</p></body></html>\r\n"
	out, _, err := compose(t, ch, Agent{Login: "bob", Signature: sig}, in)
	if err != nil {
		t.Fatal(err)
	}
	_, html, err := Bodies(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	want := "<html><body><p>Hi</p><div class=\"signature\">Bob &lt;support&gt;<br>\nhttps://shop.example.com</div>\n</body></html>\n"
	if strings.ReplaceAll(html, "\r\n", "\n") != want {
		t.Errorf("html %q, want %q", html, want)
	}
}

func TestNothingToChangeKeepsBody(t *testing.T) {
	// No template, no signature: the body is not re-encoded.
	ch := channel(TicketFormat{}, nil)(t)
	body := "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe\r\n"
	out, _, err := compose(t, ch, noSignature(t), baseHeader+"Subject: x\r\n"+body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out, body) {
		t.Errorf("body changed:\n%s", out)
	}
}

func TestOutputErrorsAreTemporary(t *testing.T) {
	ch := channel(TicketFormat{}, nil)(t)
	in := mixedWith("Content-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n", newAttachment(5, 100<<10).b64())
	_, err := New(Options{}).Compose(context.Background(), strings.NewReader(in), failingWriter{}, Request{Channel: ch, Now: fixedNow})
	wantRelayError(t, err, 451, relay.CodeTempLocal, "local")

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = New(Options{}).Compose(ctx, strings.NewReader(in), io.Discard, Request{Channel: ch, Now: fixedNow})
	wantRelayError(t, err, 451, relay.CodeTempLocal, "")

	_, err = New(Options{}).Compose(context.Background(), io.MultiReader(strings.NewReader(in[:100]), errReader{}), io.Discard, Request{Channel: ch, Now: fixedNow})
	wantRelayError(t, err, 451, relay.CodeTempLocal, "local")
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("spool read error") }

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

func decodeWords(t testing.TB, v string) string {
	t.Helper()
	d, err := (&mime.WordDecoder{}).DecodeHeader(v)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestNonUTF8Subject(t *testing.T) {
	ch := channel(TicketFormat{Style: StyleBraces}, nil)(t)
	out, res, err := compose(t, ch, noSignature(t), baseHeader+"Subject: =?iso-8859-1?q?Re=3A_Gr=FC=DFe?= =?windows-1252?q?=80_price?=\r\nX-Mailgate-Ticket: 7\r\n\r\nhi\r\n")
	if err != nil {
		t.Fatal(err)
	}
	if res.Subject != "Re: Grüße€ price {#7}" {
		t.Errorf("subject %q", res.Subject)
	}
	h, err := textproto.ReadHeader(bufioReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if got := decodeWords(t, h.Get("Subject")); got != res.Subject {
		t.Errorf("encoded subject decodes to %q", got)
	}
}
