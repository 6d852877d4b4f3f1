package graph

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"os"
	"strings"

	"github.com/emersion/go-message/textproto"
)

// maxDepth bounds MIME nesting while splitting a message (composition already refuses deeper ones).
const maxDepth = 20

// headerRecipients are the addresses Graph will send to: with a MIME message there is no envelope,
// Exchange takes the recipients from To, Cc and Bcc.
func headerRecipients(h textproto.Header) map[string]bool {
	out := map[string]bool{}
	for _, k := range []string{"To", "Cc", "Bcc"} {
		for _, v := range h.Values(k) {
			list, err := mail.ParseAddressList(v)
			if err != nil {
				continue
			}
			for _, a := range list {
				out[strings.ToLower(a.Address)] = true
			}
		}
	}
	return out
}

// bccFor returns a "Bcc:" field (CRLF-terminated) naming the envelope recipients the header does not,
// or nil. Graph has no envelope: a recipient only on the envelope (a Bcc the agent's application gave
// at RCPT) would otherwise get nothing. Exchange removes Bcc from what recipients see.
func bccFor(h textproto.Header, rcpts []string) []byte {
	have := headerRecipients(h)
	var missing []string
	for _, r := range rcpts {
		if !have[strings.ToLower(r)] {
			missing = append(missing, "<"+r+">")
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return []byte("Bcc: " + strings.Join(missing, ",\r\n ") + "\r\n")
}

// attachment is one attachment taken out of a large message, decoded into a temporary file.
type attachment struct {
	Name, ContentType, ContentID string
	Inline                       bool
	Size                         int64
	path                         string
}

func (a *attachment) open() (*os.File, error) { return os.Open(a.path) }

// split takes the attachments out of a message so that what remains (its text and HTML, headers
// intact) fits one Graph request, and returns that skeleton and the attachments in order. It is the
// first half of Microsoft's documented route for a message over 4 MB: create a draft from the
// skeleton's MIME, attach each file (an upload session from 3 MB), then send the draft. Graph cannot
// take MIME through an upload session: those are for attachments only.
func split(r io.Reader, dir string) (skeleton []byte, atts []*attachment, err error) {
	defer func() {
		if err != nil {
			removeAll(atts)
			atts = nil
		}
	}()
	br := bufio.NewReader(r)
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return nil, nil, fmt.Errorf("message header: %w", err)
	}
	var out bytes.Buffer
	if err := textproto.WriteHeader(&out, h); err != nil {
		return nil, nil, err
	}
	s := &splitter{dir: dir}
	err = s.entity(&out, h, br, 0)
	return out.Bytes(), s.atts, err
}

type splitter struct {
	dir  string
	atts []*attachment
}

// entity copies one entity's body to w, recursing into multiparts and moving attachment parts out.
func (s *splitter) entity(w *bytes.Buffer, h textproto.Header, body io.Reader, depth int) error {
	mt, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
	if !strings.HasPrefix(mt, "multipart/") || params["boundary"] == "" {
		_, err := io.Copy(w, body)
		return err
	}
	if depth >= maxDepth {
		return errors.New("MIME nesting too deep")
	}
	boundary := params["boundary"]
	mr := textproto.NewMultipartReader(body, boundary)
	kept := 0
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("multipart: %w", err)
		}
		if a, ok := attachmentOf(p.Header); ok {
			if err := s.extract(a, p.Header, p); err != nil {
				return err
			}
			continue
		}
		kept++
		fmt.Fprintf(w, "\r\n--%s\r\n", boundary)
		if err := textproto.WriteHeader(w, p.Header); err != nil {
			return err
		}
		if err := s.entity(w, p.Header, p, depth+1); err != nil {
			return err
		}
	}
	if kept == 0 {
		// Every part was an attachment: keep the multipart well-formed with an empty text part.
		fmt.Fprintf(w, "\r\n--%s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n", boundary)
	}
	fmt.Fprintf(w, "\r\n--%s--\r\n", boundary)
	return nil
}

// attachmentOf decides whether a part is a file for Graph's attachment model: a part with
// Content-Disposition attachment, or a non-text leaf that carries a file name or a Content-ID (an
// inline image of the HTML). Text and HTML bodies stay in the skeleton.
func attachmentOf(h textproto.Header) (*attachment, bool) {
	mt, ctParams, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt == "" {
		mt = "text/plain"
	}
	if strings.HasPrefix(mt, "multipart/") {
		return nil, false
	}
	disp, dParams, _ := mime.ParseMediaType(h.Get("Content-Disposition"))
	name := dParams["filename"]
	if name == "" {
		name = ctParams["name"]
	}
	cid := strings.Trim(strings.TrimSpace(h.Get("Content-ID")), "<>")
	isAtt := disp == "attachment" || (!strings.HasPrefix(mt, "text/") && (name != "" || cid != ""))
	if !isAtt {
		return nil, false
	}
	if dec, err := new(mime.WordDecoder).DecodeHeader(name); err == nil {
		name = dec
	}
	if name == "" {
		name = "attachment"
	}
	return &attachment{Name: name, ContentType: mt, ContentID: cid, Inline: disp == "inline" || (disp == "" && cid != "")}, true
}

// extract decodes a part's body (its Content-Transfer-Encoding) into a temporary file.
func (s *splitter) extract(a *attachment, h textproto.Header, body io.Reader) error {
	f, err := os.CreateTemp(s.dir, "mailgate-graph-*")
	if err != nil {
		return err
	}
	a.path = f.Name()
	s.atts = append(s.atts, a)
	var r io.Reader = body
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "base64":
		r = base64.NewDecoder(base64.StdEncoding, &base64Clean{r: body})
	case "quoted-printable":
		r = quotedprintable.NewReader(body)
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("attachment %q: %w", a.Name, err)
	}
	a.Size = n
	return nil
}

func removeAll(atts []*attachment) {
	for _, a := range atts {
		if a.path != "" {
			os.Remove(a.path)
		}
	}
}

// base64Clean drops line breaks and spaces, which encoding/base64's decoder only partly ignores.
type base64Clean struct{ r io.Reader }

func (c *base64Clean) Read(p []byte) (int, error) {
	for {
		n, err := c.r.Read(p)
		k := 0
		for _, b := range p[:n] {
			if b != '\r' && b != '\n' && b != ' ' && b != '\t' {
				p[k] = b
				k++
			}
		}
		if k > 0 || err != nil {
			return k, err
		}
	}
}
