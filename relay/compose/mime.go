package compose

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"sort"
	"strings"

	"github.com/emersion/go-message/charset"
	"github.com/emersion/go-message/textproto"

	"github.com/mailgate/mailgate/relay"
)

// kind is what composition does with one MIME entity.
type kind int

const (
	kindPass          kind = iota // leaf copied byte for byte (checked as an attachment)
	kindText                      // the agent's text/plain, rewritten (signature, text template)
	kindHTML                      // the agent's text/html, rewritten (signature, template)
	kindTextToAlt                 // the agent's text/plain, becoming multipart/alternative with an HTML part
	kindHTMLToAlt                 // the agent's text/html alone, becoming multipart/alternative with a text part
	kindMultipart                 // a multipart holding the agent's content: rebuilt part by part
	kindMultipartPass             // any other multipart: copied byte for byte (parsed only to check attachments)
	kindMessage                   // message/rfc822, message/global: copied byte for byte (parsed likewise)
)

// entity is the plan for one MIME entity, decided from its header alone, so the header can be written
// before the body is read.
type entity struct {
	kind        kind
	mediaType   string
	params      map[string]string
	cte         string
	disposition string
	name        string // file name from Content-Disposition filename (RFC 2231 too) or Content-Type name
	// inAlternative: the entity is (inside) an alternative of a multipart/alternative, so its text or
	// HTML already has its other form beside it.
	inAlternative bool
}

func (j *job) entityOf(h *textproto.Header, isBody, inAlternative bool) (entity, error) {
	e := entity{mediaType: "text/plain", params: map[string]string{}, inAlternative: inAlternative} // RFC 2045 §5.2 default
	if ct := h.Get("Content-Type"); ct != "" {
		mt, params, err := mime.ParseMediaType(ct)
		switch {
		case err == nil || err == mime.ErrInvalidMediaParameter:
			e.mediaType, e.params = mt, params
		case isBody:
			return e, malformed("malformed Content-Type %q", clip(ct))
		default:
			e.mediaType = "application/octet-stream"
		}
	}
	if e.params == nil {
		e.params = map[string]string{}
	}
	e.cte = strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding")))
	wd := &mime.WordDecoder{CharsetReader: charset.Reader}
	if cd := h.Get("Content-Disposition"); cd != "" {
		// RFC 2183; mime.ParseMediaType decodes RFC 2231 filename* and continuations.
		disp, params, err := mime.ParseMediaType(cd)
		if err == nil || err == mime.ErrInvalidMediaParameter {
			e.disposition = disp
			e.name = params["filename"]
		} else if i := strings.IndexByte(cd, ';'); i >= 0 {
			e.disposition = strings.ToLower(strings.TrimSpace(cd[:i]))
		}
		if err != nil && e.name == "" {
			e.name = looseParam(cd, "filename")
		}
	}
	if e.name == "" {
		e.name = e.params["name"]
	}
	if e.name == "" && len(e.params) == 0 {
		e.name = looseParam(h.Get("Content-Type"), "name")
	}
	if e.name != "" {
		// Clients put RFC 2047 encoded-words inside quoted names although RFC 2047 §5 forbids it.
		if d, err := wd.DecodeHeader(e.name); err == nil {
			e.name = d
		}
	}
	attachment := e.disposition == "attachment" || e.name != ""
	sig := j.req.Agent.Signature != nil
	tmpl := j.ch.Template
	switch {
	case strings.HasPrefix(e.mediaType, "multipart/"):
		if e.params["boundary"] == "" {
			return e, malformed("%s without a boundary", e.mediaType)
		}
		// A signed or encrypted multipart must stay as it is (RFC 1847): rewriting breaks it.
		if isBody && e.mediaType != "multipart/signed" && e.mediaType != "multipart/encrypted" {
			e.kind = kindMultipart
		} else {
			e.kind = kindMultipartPass
		}
	case e.mediaType == "message/rfc822" || e.mediaType == "message/global":
		e.kind = kindMessage
	case isBody && !attachment && e.mediaType == "text/plain":
		switch {
		case tmpl != nil && !inAlternative:
			e.kind = kindTextToAlt
		case sig || (tmpl != nil && tmpl.HasText()):
			e.kind = kindText
		default:
			e.kind = kindPass // nothing to change: keep the bytes
		}
	case isBody && !attachment && e.mediaType == "text/html":
		switch {
		case !inAlternative:
			// HTML alone scores as spam and leaves text-only readers with markup: it gets a text
			// alternative, rendered from it (HTMLToText), whatever the channel's template and signature.
			e.kind = kindHTMLToAlt
		case sig || tmpl != nil:
			e.kind = kindHTML
		default:
			e.kind = kindPass
		}
	default:
		e.kind = kindPass
	}
	return e, nil
}

// looseParam finds name=value in a header that mime.ParseMediaType refused (broken quoting is common
// in attachment names, and the policy check must still see the name).
func looseParam(v, name string) string {
	lv := strings.ToLower(v)
	i := strings.Index(lv, name+"=")
	if i < 0 {
		return ""
	}
	s := strings.TrimSpace(v[i+len(name)+1:])
	if strings.HasPrefix(s, `"`) {
		s = s[1:]
		if k := strings.IndexByte(s, '"'); k >= 0 {
			return s[:k]
		}
		return s
	}
	if k := strings.IndexAny(s, "; \t"); k >= 0 {
		return s[:k]
	}
	return s
}

func clip(s string) string {
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

// writeEntity writes one entity: its header fields fs (already rewritten where mailgate owns them),
// adjusted to the plan, then its body.
func (j *job) writeEntity(fs []hfield, e entity, body io.Reader, depth int, top bool) error {
	if depth > j.c.maxDepth {
		return malformed("MIME structure nested deeper than %d levels", j.c.maxDepth)
	}
	switch e.kind {
	case kindPass:
		if err := j.checkAttachment(e); err != nil {
			return err
		}
		if err := j.writeFields(fs); err != nil {
			return err
		}
		_, err := io.CopyBuffer(j.out, body, j.copyBuf)
		return err

	case kindMultipartPass, kindMessage:
		if err := j.checkAttachment(e); err != nil {
			return err
		}
		if err := j.writeFields(fs); err != nil {
			return err
		}
		if j.allowed == nil {
			_, err := io.CopyBuffer(j.out, body, j.copyBuf)
			return err
		}
		// Parse while copying: the tee writes every byte the parser reads, in order; the rest is
		// drained through the tee afterwards.
		tee := io.TeeReader(body, j.out)
		if err := j.scan(e, tee, depth+1); err != nil {
			return err
		}
		_, err := io.CopyBuffer(io.Discard, tee, j.copyBuf)
		return err

	case kindText, kindHTML, kindTextToAlt, kindHTMLToAlt:
		// The part is held in memory several times over (decoded, with signature, inside the
		// template): reserve the most it can hold before decoding, keep what it really holds.
		factor := memoryFactor(e.kind)
		res, err := j.c.budget.acquire(j.ctx, j.partBound(e)*factor)
		if err != nil {
			return err
		}
		defer res.release()
		content, err := j.decodeBody(body, e)
		if err != nil {
			return err
		}
		need := int64(len(content)) * factor
		if need > j.c.budget.Size() {
			return relay.Errorf(552, relay.CodeTooBig, "size",
				"message body part too big: %s of %d bytes needs more memory than composition may use (send large content as an attachment)",
				e.mediaType, len(content))
		}
		res.shrink(need)
		return j.writeRewritten(fs, e, content, top)

	case kindMultipart:
		if err := j.writeFields(fs); err != nil {
			return err
		}
		return j.rebuildMultipart(e, body, depth+1)
	}
	return fmt.Errorf("compose: unknown entity kind %d", e.kind)
}

// writeRewritten writes the agent's text or HTML with signature and template applied, as UTF-8
// quoted-printable (RFC 2045 §6.7: safe through any transport, lines within 76 characters).
func (j *job) writeRewritten(fs []hfield, e entity, content string, top bool) error {
	qpHeaders := func(mt string, params map[string]string) []hfield {
		p := map[string]string{}
		for k, v := range params {
			if k != "charset" && k != "name" {
				p[k] = v
			}
		}
		p["charset"] = "utf-8"
		out := setField(fs, "Content-Type", FoldHeader("Content-Type", mime.FormatMediaType(mt, p)))
		return setField(out, "Content-Transfer-Encoding", []byte("Content-Transfer-Encoding: quoted-printable\r\n"))
	}
	switch e.kind {
	case kindText:
		text, err := j.agentText(content)
		if err != nil {
			return err
		}
		if err := j.writeFields(qpHeaders("text/plain", e.params)); err != nil {
			return err
		}
		return j.writeQP(text)
	case kindHTML:
		h, err := j.agentHTML(content)
		if err != nil {
			return err
		}
		if err := j.writeFields(qpHeaders("text/html", e.params)); err != nil {
			return err
		}
		return j.writeQP(h)
	}
	// kindTextToAlt: the agent's text plus an HTML alternative from the template; kindHTMLToAlt: a text
	// alternative rendered from the agent's HTML, then the HTML (RFC 2046 §5.1.4: the plainest first).
	// Each part is built when it is written, so both are never held at once.
	parts := []struct {
		mt   string
		body func(string) (string, error)
	}{{"text/plain", j.agentText}, {"text/html", j.textAsHTML}}
	if e.kind == kindHTMLToAlt {
		parts[0].body = j.htmlAsText
		parts[1].body = j.agentHTML
	}
	b, err := j.boundary()
	if err != nil {
		return err
	}
	ct := FoldHeader("Content-Type", mime.FormatMediaType("multipart/alternative", map[string]string{"boundary": b}))
	out := setField(fs, "Content-Type", ct)
	out = setField(out, "Content-Transfer-Encoding", nil)
	for i, p := range parts {
		body, err := p.body(content)
		if err != nil {
			return err
		}
		if i == 0 {
			if err := j.writeFields(out); err != nil {
				return err
			}
		}
		sep := "\r\n--" + b + "\r\n"
		if i == 0 {
			sep = "--" + b + "\r\n"
		}
		hdr := sep + "Content-Type: " + p.mt + "; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
		if _, err := io.WriteString(j.out, hdr); err != nil {
			return err
		}
		if err := j.writeQP(body); err != nil {
			return err
		}
	}
	_, err = io.WriteString(j.out, "\r\n--"+b+"--\r\n")
	return err
}

// writeQP writes s quoted-printable, a line at a time: the encoded body is never held whole.
func (j *job) writeQP(s string) error {
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	buf := make([]byte, 0, 64<<10)
	for len(s) > 0 {
		i := strings.IndexByte(s, '\n')
		buf = appendQPLine(buf, s[:i])
		s = s[i+1:]
		if len(buf) >= 60<<10 || len(s) == 0 {
			if _, err := j.out.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
	}
	return nil
}

// encodeQP is quoted-printable (RFC 2045 §6.7) with "\n" as the line break, plus two rules of
// §6.7's "may be encoded" latitude: a "-" or "." that starts a physical line is encoded, so no line of
// a rewritten body can look like a MIME boundary delimiter ("--boundary", whatever the agent's text
// holds) or an SMTP end-of-data line. Lines stay within 76 characters with soft line breaks.
func encodeQP(s string) []byte {
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	b := make([]byte, 0, len(s)+len(s)/8)
	for _, line := range strings.Split(s[:len(s)-1], "\n") {
		b = appendQPLine(b, line)
	}
	return b
}

// appendQPLine appends one line of text (without its line break) as encodeQP encodes it, CRLF ended.
func appendQPLine(b []byte, line string) []byte {
	const hexDigits = "0123456789ABCDEF"
	col := 0
	for i := 0; i < len(line); i++ {
		c := line[i]
		last := i == len(line)-1
		for {
			literal := (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !last)
			if col == 0 && (c == '-' || c == '.') {
				literal = false
			}
			n := 1
			if !literal {
				n = 3
			}
			// Keep room for a soft break "=" unless this is the line's last character.
			if col+n > 75 || (col+n == 76 && !last) {
				b = append(b, '=', '\r', '\n')
				col = 0
				continue // re-decide at the start of the new physical line
			}
			if literal {
				b = append(b, c)
			} else {
				b = append(b, '=', hexDigits[c>>4], hexDigits[c&15])
			}
			col += n
			break
		}
	}
	return append(b, '\r', '\n')
}

// decodeBody decodes a body part composition rewrites: transfer encoding, then charset to UTF-8, with
// line breaks as "\n". It holds the part in memory, so it is bounded by MaxBodyBytes.
func (j *job) decodeBody(body io.Reader, e entity) (string, error) {
	r := body
	switch e.cte {
	case "", "7bit", "8bit", "binary":
	case "quoted-printable":
		r = quotedprintable.NewReader(r)
	case "base64":
		r = base64.NewDecoder(base64.StdEncoding, r) // ignores CR and LF
	default:
		return "", malformed("unknown Content-Transfer-Encoding %q", clip(e.cte))
	}
	switch cs := strings.ToLower(e.params["charset"]); cs {
	case "", "utf-8", "utf8", "us-ascii", "ascii":
	default:
		cr, err := charset.Reader(cs, r)
		if err != nil {
			return "", malformed("unsupported charset %q", clip(cs))
		}
		r = cr
	}
	data, read, err := readLF(io.LimitReader(r, j.c.maxBody+1))
	if err != nil {
		if _, ok := relay.AsError(err); ok {
			return "", err
		}
		if _, ok := err.(*writeError); ok {
			return "", err
		}
		return "", relay.Wrap(err, 554, relay.CodeMalformed, "malformed", "malformed "+e.mediaType+" body")
	}
	if read > j.c.maxBody {
		return "", relay.Errorf(552, relay.CodeTooBig, "size",
			"message body part too big: %s over %d bytes (send large content as an attachment)", e.mediaType, j.c.maxBody)
	}
	return data, nil
}

// readLF reads r to its end into one string with CRLF turned into LF, copying the text once (not
// read, then converted to a string, then replaced). It also returns how many bytes it read.
func readLF(r io.Reader) (text string, read int64, err error) {
	var out strings.Builder
	buf := make([]byte, 32<<10)
	cr := false // the previous chunk ended in CR
	for {
		n, err := r.Read(buf)
		read += int64(n)
		p := buf[:n]
		if cr && n > 0 {
			if p[0] != '\n' {
				out.WriteByte('\r')
			}
			cr = false
		}
		if n > 0 && p[n-1] == '\r' {
			cr, p = true, p[:n-1]
		}
		for len(p) > 0 {
			i := bytes.Index(p, []byte("\r\n"))
			if i < 0 {
				out.Write(p)
				break
			}
			out.Write(p[:i])
			out.WriteByte('\n')
			p = p[i+2:]
		}
		if err == io.EOF {
			if cr {
				out.WriteByte('\r')
			}
			return out.String(), read, nil
		}
		if err != nil {
			return "", read, err
		}
	}
}

// memoryFactor is how many times over a rewritten part of kind k is held at its peak, relative to its
// decoded size, measured with TestComposeMemory: the decoded text, the text with the signature, the
// template's output (and for a text-only message, its HTML alternative besides).
func memoryFactor(k kind) int64 {
	if k == kindTextToAlt || k == kindHTMLToAlt {
		return 8
	}
	return 6
}

// partBound is the most a body part about to be decoded can hold: MaxBodyBytes, and when the input's
// size is known, what is left of the input (the bufio reader may hold 32 KiB read ahead), three times
// over if a charset other than UTF-8 is converted (one input byte is at most three UTF-8 bytes).
func (j *job) partBound(e entity) int64 {
	bound := j.c.maxBody + 1
	if j.req.InputSize > 0 {
		left := max(0, j.req.InputSize-j.guard.n) + 32<<10
		switch strings.ToLower(e.params["charset"]) {
		case "", "utf-8", "utf8", "us-ascii", "ascii":
		default:
			left *= 3
		}
		bound = min(bound, left)
	}
	return bound
}

// rebuildMultipart writes a multipart that holds the agent's content part by part, keeping its
// boundary and preamble; the epilogue (text after the final delimiter, RFC 2046 §5.1.1 "to be
// ignored") is dropped.
func (j *job) rebuildMultipart(e entity, body io.Reader, depth int) error {
	boundary := e.params["boundary"]
	br := bufio.NewReaderSize(body, 8<<10)
	// Preamble: copied up to the first delimiter line.
	var first []byte
	midLine := false
	for {
		line, err := br.ReadSlice('\n')
		if !midLine && isDelimiter(line, boundary) {
			first = append([]byte(nil), line...)
			break
		}
		if len(line) > 0 {
			if _, werr := j.out.Write(line); werr != nil {
				return werr
			}
		}
		midLine = err == bufio.ErrBufferFull
		if err != nil && err != bufio.ErrBufferFull {
			if err == io.EOF {
				return malformed("%s body without its boundary", e.mediaType)
			}
			return err
		}
	}
	mr := textproto.NewMultipartReader(io.MultiReader(bytes.NewReader(first), br), boundary)
	alternative := e.mediaType == "multipart/alternative"
	related := e.mediaType == "multipart/related"
	bodyTaken := false
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			if re, ok := relay.AsError(err); ok {
				return re
			}
			return relay.Wrap(err, 554, relay.CodeMalformed, "malformed", "malformed "+e.mediaType+" body")
		}
		sep := "\r\n--" + boundary + "\r\n"
		if i == 0 {
			sep = "--" + boundary + "\r\n"
		}
		if _, err := io.WriteString(j.out, sep); err != nil {
			return err
		}
		var isBody bool
		switch {
		case alternative:
			isBody = true
		case related:
			isBody = i == 0
		default:
			isBody = !bodyTaken && isContentPart(&p.Header)
			bodyTaken = bodyTaken || isBody
		}
		ce, err := j.entityOf(&p.Header, isBody, alternative || e.inAlternative)
		if err != nil {
			return err
		}
		fs, err := fieldsOf(&p.Header)
		if err != nil {
			return malformed("malformed part header")
		}
		if err := j.writeEntity(fs, ce, p, depth, false); err != nil {
			return err
		}
	}
	_, err := io.WriteString(j.out, "\r\n--"+boundary+"--\r\n")
	return err
}

// isContentPart reports whether a part of a multipart/mixed can be the agent's content: a text or
// multipart part that is not an attachment.
func isContentPart(h *textproto.Header) bool {
	mt := "text/plain"
	if ct := h.Get("Content-Type"); ct != "" {
		m, _, err := mime.ParseMediaType(ct)
		if err != nil && err != mime.ErrInvalidMediaParameter {
			return false
		}
		mt = m
	}
	if mt != "text/plain" && mt != "text/html" && !strings.HasPrefix(mt, "multipart/") {
		return false
	}
	if cd := h.Get("Content-Disposition"); cd != "" {
		d, params, _ := mime.ParseMediaType(cd)
		if d == "attachment" || params["filename"] != "" {
			return false
		}
	}
	_, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
	return params["name"] == ""
}

// isDelimiter matches a multipart delimiter or close-delimiter line (RFC 2046 §5.1.1: "--" boundary,
// optional "--", optional linear white space, CRLF).
func isDelimiter(line []byte, boundary string) bool {
	if !bytes.HasPrefix(line, []byte("--"+boundary)) {
		return false
	}
	rest := line[2+len(boundary):]
	rest = bytes.TrimPrefix(rest, []byte("--"))
	rest = bytes.TrimRight(rest, " \t\r\n")
	return len(rest) == 0
}

// scan parses an entity only to check the attachment types inside it; the caller copies the bytes.
func (j *job) scan(e entity, body io.Reader, depth int) error {
	if depth > j.c.maxDepth {
		return malformed("MIME structure nested deeper than %d levels", j.c.maxDepth)
	}
	if e.kind == kindMessage {
		r := body
		switch e.cte {
		case "base64": // not allowed for message/rfc822 (RFC 2046 §5.2.1) but seen; decode to check
			r = base64.NewDecoder(base64.StdEncoding, r)
		case "quoted-printable":
			r = quotedprintable.NewReader(r)
		}
		br := bufio.NewReader(r)
		h, err := textproto.ReadHeader(br)
		if err != nil {
			return malformed("cannot check attachments: malformed header in an attached message")
		}
		ce, err := j.entityOf(&h, false, false)
		if err != nil {
			return err
		}
		if err := j.checkAttachment(ce); err != nil {
			return err
		}
		if ce.kind == kindMultipartPass || ce.kind == kindMessage {
			return j.scan(ce, br, depth+1)
		}
		return nil
	}
	mr := textproto.NewMultipartReader(body, e.params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if re, ok := relay.AsError(err); ok {
				return re
			}
			return relay.Wrap(err, 554, relay.CodeMalformed, "malformed", "cannot check attachments: malformed "+e.mediaType)
		}
		ce, err := j.entityOf(&p.Header, false, false)
		if err != nil {
			return err
		}
		if err := j.checkAttachment(ce); err != nil {
			return err
		}
		if ce.kind == kindMultipartPass || ce.kind == kindMessage {
			if err := j.scan(ce, p, depth+1); err != nil {
				return err
			}
		}
	}
}

// allowedSet normalises the business unit's accepted extensions; nil means all are accepted ("If no
// extensions are added, all attachments are allowed").
func allowedSet(exts []string) map[string]bool {
	if len(exts) == 0 {
		return nil
	}
	m := make(map[string]bool, len(exts))
	for _, e := range exts {
		if n := normalizeExt(e); n != "" {
			m[n] = true
		}
	}
	return m
}

// normalizeExt turns "PNG", ".png", " .Png " into ".png"; "" for something that is not an extension.
func normalizeExt(e string) string {
	e = strings.ToLower(strings.TrimSpace(e))
	e = strings.TrimPrefix(e, ".")
	if e == "" || len(e) > 32 {
		return ""
	}
	for _, c := range e {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '+') {
			return ""
		}
	}
	return "." + e
}

// extensionOf is a file name's extension as the recipient's system sees it: after the last path
// separator, ignoring trailing dots and spaces (Windows drops them: "x.exe." opens as x.exe).
func extensionOf(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.TrimRight(name, ". \t")
	i := strings.LastIndexByte(name, '.')
	if i <= 0 && !(i == 0 && len(name) > 1) {
		return ""
	}
	return strings.ToLower(name[i:])
}

// extensionsOfType names the extensions of a nameless part's media type, so an inline image without
// a file name is still held to the list. A fixed table, not the system's mime.types: the policy must
// not change with the host.
func extensionsOfType(mt string) []string {
	switch mt {
	case "image/png":
		return []string{".png"}
	case "image/jpeg", "image/jpg", "image/pjpeg":
		return []string{".jpg", ".jpeg"}
	case "image/gif":
		return []string{".gif"}
	case "image/bmp":
		return []string{".bmp"}
	case "image/webp":
		return []string{".webp"}
	case "image/tiff":
		return []string{".tif", ".tiff"}
	case "image/svg+xml":
		return []string{".svg"}
	case "application/pdf":
		return []string{".pdf"}
	case "application/zip":
		return []string{".zip"}
	case "text/plain":
		return []string{".txt"}
	case "text/html":
		return []string{".html", ".htm"}
	case "text/csv":
		return []string{".csv"}
	case "text/calendar":
		return []string{".ics"}
	case "application/msword":
		return []string{".doc"}
	case "application/vnd.openxmlformats-officedocument.wordprocessingml.document":
		return []string{".docx"}
	case "application/vnd.ms-excel":
		return []string{".xls"}
	case "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet":
		return []string{".xlsx"}
	case "application/vnd.openxmlformats-officedocument.presentationml.presentation":
		return []string{".pptx"}
	}
	return nil
}

// checkAttachment applies the business unit's accepted extensions to one entity ("Configure Supported
// Email Attachments"): named parts by their name's extension, nameless ones by their media type.
// Nameless text that is not marked as an attachment is message content, and nameless containers are
// checked through their contents.
func (j *job) checkAttachment(e entity) error {
	if j.allowed == nil {
		return nil
	}
	if e.name != "" {
		ext := extensionOf(e.name)
		if ext == "" {
			return relay.Errorf(550, relay.CodePolicy, "attachment",
				"attachment %q has no file extension; accepted: %s", clip(e.name), j.acceptedList())
		}
		if !j.allowed[ext] {
			return relay.Errorf(550, relay.CodePolicy, "attachment",
				"attachment type %s is not accepted (%q); accepted: %s", clip(ext), clip(e.name), j.acceptedList())
		}
		return nil
	}
	if e.kind == kindMultipartPass || e.kind == kindMessage || e.kind == kindMultipart {
		return nil
	}
	if strings.HasPrefix(e.mediaType, "text/") && e.disposition != "attachment" &&
		(e.mediaType == "text/plain" || e.mediaType == "text/html") {
		return nil
	}
	exts := extensionsOfType(e.mediaType)
	for _, x := range exts {
		if j.allowed[x] {
			return nil
		}
	}
	if len(exts) == 0 {
		return relay.Errorf(550, relay.CodePolicy, "attachment",
			"attachment of type %s without a file name is not accepted; accepted: %s", clip(e.mediaType), j.acceptedList())
	}
	return relay.Errorf(550, relay.CodePolicy, "attachment",
		"attachment type %s (%s) is not accepted; accepted: %s", exts[0], clip(e.mediaType), j.acceptedList())
}

func (j *job) acceptedList() string {
	l := make([]string, 0, len(j.allowed))
	for k := range j.allowed {
		l = append(l, k)
	}
	sort.Strings(l)
	return strings.Join(l, ", ")
}
