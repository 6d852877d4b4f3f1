package compose

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // non-UTF-8 charsets for message.Read
)

// PreviewInput is the agent's side of a preview: what an agent application would submit.
type PreviewInput struct {
	To      string // recipient shown in To; "" means customer@example.com
	Subject string
	Ticket  string // sent as X-Mailgate-Ticket when set
	Text    string // plain-text body (may be empty when HTML is set)
	HTML    string // HTML body (may be empty when Text is set); both = multipart/alternative
}

// Preview is a composed preview: the whole message and its decoded text and HTML bodies (for
// `mailgate preview --html-out`).
type Preview struct {
	Message []byte
	Text    string
	HTML    string
	Result  Result
}

// Preview composes what the customer would receive for in on req's channel, so an operator can see a
// template and signature before use (DESIGN §3, `mailgate preview`). It runs the same Compose as
// submission.
func (c *Composer) Preview(ctx context.Context, req Request, in PreviewInput) (Preview, error) {
	if req.Channel == nil {
		return Preview{}, errors.New("compose: preview without a channel")
	}
	if in.Ticket != "" && !ValidTicket(in.Ticket) {
		return Preview{}, fmt.Errorf("ticket %q: must be 1 to %d digits", in.Ticket, MaxTicketLen)
	}
	to := in.To
	if to == "" {
		to = "customer@example.com"
	}
	var src bytes.Buffer
	fmt.Fprintf(&src, "From: <%s>\r\nTo: <%s>\r\n", req.Channel.FromAddress, to)
	if in.Subject != "" {
		src.Write(FoldHeader("Subject", EncodeUnstructured(in.Subject)))
	}
	if in.Ticket != "" {
		fmt.Fprintf(&src, "%s: %s\r\n", TicketHeader, in.Ticket)
	}
	src.WriteString("MIME-Version: 1.0\r\n")
	crlf := func(s string) string {
		return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
	}
	switch {
	case in.Text != "" && in.HTML != "":
		b := "=_preview_alternative"
		fmt.Fprintf(&src, "Content-Type: multipart/alternative; boundary=%q\r\n\r\n", b)
		fmt.Fprintf(&src, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n%s\r\n", b, crlf(in.Text))
		fmt.Fprintf(&src, "--%s\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n%s\r\n", b, crlf(in.HTML))
		fmt.Fprintf(&src, "--%s--\r\n", b)
	case in.HTML != "":
		fmt.Fprintf(&src, "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n%s\r\n", crlf(in.HTML))
	default:
		fmt.Fprintf(&src, "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n%s\r\n", crlf(in.Text))
	}
	var out bytes.Buffer
	res, err := c.Compose(ctx, &src, &out, req)
	if err != nil {
		return Preview{}, err
	}
	p := Preview{Message: out.Bytes(), Result: res}
	p.Text, p.HTML, err = Bodies(bytes.NewReader(p.Message))
	if err != nil {
		return Preview{}, err
	}
	return p, nil
}

// Bodies extracts the first text/plain and text/html bodies of a message that are not attachments,
// decoded to UTF-8 (for previews and tests).
func Bodies(r io.Reader) (text, html string, err error) {
	m, err := message.Read(r)
	if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
		return "", "", err
	}
	err = m.Walk(func(path []int, e *message.Entity, err error) error {
		if err != nil {
			return err
		}
		mt, _, _ := e.Header.ContentType()
		if disp, _, _ := e.Header.ContentDisposition(); disp == "attachment" {
			return nil
		}
		if mt != "text/plain" && mt != "text/html" {
			return nil
		}
		// go-message decodes transfer encoding and charset (the charset package registers itself).
		b, err := io.ReadAll(e.Body)
		if err != nil {
			return err
		}
		if mt == "text/plain" && text == "" {
			text = string(b)
		}
		if mt == "text/html" && html == "" {
			html = string(b)
		}
		return nil
	})
	return text, html, err
}
