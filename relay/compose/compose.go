// Package compose turns an agent's submitted message into the customer-facing email of its channel
// (DESIGN §3): subject and ticket number, From with the channel's display name, a Message-ID in the
// channel's domain carrying the ticket, Date in the business unit's time zone, the branded template,
// the agent's signature, the attachment policy, the composed-size limit, and removal of mailgate's
// internal headers.
//
// Design: Compose is a streaming MIME rewrite built on go-message's textproto layer, which keeps raw
// header bytes. The input is read once, the output written once:
//
//   - Header fields mailgate does not own keep their bytes and their order. Owned fields (From, Subject,
//     Date, Message-ID, and Content-Type/Content-Transfer-Encoding of a rewritten body) are replaced
//     in place; missing ones are added at the top; X-Mailgate-* and Bcc are removed. Fields that are
//     not the agent's to set are removed — Sender (mailgate, as the channel, is the sender: RFC 5322
//     §3.6.2), Return-Path and Received (trace fields, RFC 5321 §4.4, added by the hops themselves; an
//     agent's would be forged history), X-Mailer and User-Agent (the agent application's internals) — or
//     refused with 550 5.7.1: Resent-* (RFC 5322 §3.6.6 resending,
//     which would present the message as resent by someone other than the channel).
//   - Only "the agent's content" is rewritten: the top-level text part, or in a multipart message the
//     first non-attachment part, recursively (every text/plain and text/html of a
//     multipart/alternative, the root of a multipart/related). Those bodies are decoded (transfer
//     encoding and charset), held in memory, bounded by Options.MaxBodyBytes, and written back as UTF-8
//     quoted-printable. A body part over the bound is refused with 552 5.3.4 rather than passed
//     through without template and signature: the customer would otherwise silently get an unbranded
//     mail, and the agent application can send large content as an attachment instead. Holding is
//     bounded twice: per part, and for all compositions together by a Budget (a weighted semaphore)
//     that a part reserves from before it is decoded — its upper bound, from MaxBodyBytes and the
//     input left — and shrinks to its real need after. Compositions over the budget wait their turn
//     (with their context); a part needing more than the whole budget is refused with 552 5.3.4, so
//     memory never grows with the number of concurrent large replies.
//   - Everything else (attachments, inline images, forwarded messages) is streamed through
//     byte-identical, header and body; when the business unit restricts attachment types, the bytes
//     are parsed on the fly through a tee while they are copied, so nested message/rfc822 parts are
//     checked without buffering. Memory therefore does not grow with attachment size.
//   - The output is counted as it is written: the first byte over the channel's limit stops the
//     composition with 552 5.3.4, so an oversized result is never produced in full.
//
// Every refusal is a *relay.Error: 550 5.7.1 for a refused attachment type, 552 5.3.4 for size, 554
// 5.6.0 for malformed MIME. Other failures (reading the spooled input, writing the output) are 451
// 4.3.0, temporary.
package compose

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-message/charset"
	"github.com/emersion/go-message/textproto"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/signatures"
	"github.com/mailgate/mailgate/templates"
)

// Channel is what composition needs to know about a channel (and its business unit).
type Channel struct {
	Name        string // internal name, for errors and logs
	FromAddress string // the channel's address; its domain names the Message-ID
	DisplayName string // the name customers see in From
	Template    *templates.Template
	Ticket      TicketFormat
	Threading   Threading
	// Location is the business unit's time zone for Date; nil means UTC.
	Location *time.Location
	// AllowedExtensions are the business unit's accepted attachment extensions (".png" form, case
	// insensitive); empty allows all.
	AllowedExtensions []string
	// MaxMessageBytes is the largest composed message the channel's transport takes (SES: 40 MB of
	// final MIME); 0 means no limit.
	MaxMessageBytes int64
}

// Validate reports every problem of the channel's composition settings, with field paths relative to
// the channel (ticket.style, threading, from_address, allowed_extensions[i]).
func (c *Channel) Validate() []error {
	var errs []error
	if !relay.ValidAddress(c.FromAddress) {
		errs = append(errs, &FieldError{"from_address", fmt.Sprintf("%q is not a plain mail address (local@domain)", c.FromAddress)})
	}
	errs = append(errs, c.Ticket.Validate(c.Threading)...)
	for i, e := range c.AllowedExtensions {
		if normalizeExt(e) == "" {
			errs = append(errs, &FieldError{fmt.Sprintf("allowed_extensions[%d]", i), fmt.Sprintf("%q is not a file extension like .png", e)})
		}
	}
	if c.MaxMessageBytes < 0 {
		errs = append(errs, &FieldError{"max_message_bytes", "must not be negative"})
	}
	return errs
}

// domain is the part of the channel's address after the last "@".
func (c *Channel) domain() string {
	if i := strings.LastIndexByte(c.FromAddress, '@'); i >= 0 {
		return c.FromAddress[i+1:]
	}
	return "mailgate.invalid"
}

// Agent is the submitting agent as composition sees it.
type Agent struct {
	Login     string
	Name      string                // display name, for the template's {{.AgentName}}
	Signature *signatures.Signature // nil = no signature
}

// Request is one composition: which channel, on whose behalf, at what time.
type Request struct {
	Channel *Channel
	Agent   Agent
	Now     time.Time // zero = time.Now()
	// InputSize is the size of the submitted message if known (0 if not): it bounds what a body part
	// can hold, so small messages reserve little of the composition memory Budget.
	InputSize int64
}

// Result describes the composed message, for the envelope, the delivery log and the submission's policy.
type Result struct {
	MessageID string // without angle brackets
	Ticket    string // "" for a new outbound message without a ticket
	Subject   string // final subject, decoded
	// Reply reports whether the message is a reply (DESIGN §2): it carries a ticket number, or
	// In-Reply-To/References (unless the channel ignores In-Reply-To). Anything else is a new outbound
	// email, which needs the channel's outbound flow and the role's outbound permission.
	Reply bool
	Size  int64 // bytes written to dst
}

// Options configures a Composer.
type Options struct {
	// Rand makes Message-IDs and MIME boundaries unique; nil means crypto/rand. Tests inject a fixed
	// stream to get reproducible output; a Rand shared by concurrent Compose calls must be safe for
	// concurrent use (crypto/rand is).
	Rand io.Reader
	// MaxBodyBytes bounds one decoded text or HTML body part that composition rewrites (held in
	// memory); larger ones are refused with 552 5.3.4. 0 means 10 MiB.
	MaxBodyBytes int64
	// Budget bounds the memory all compositions hold for rewritten body parts at once; share one
	// across Composers (and reloads). nil means a budget of DefaultBudget for this Composer alone.
	Budget *Budget
	// MaxDepth bounds MIME nesting (multipart and message/rfc822 levels). 0 means 32.
	MaxDepth int
	// MaxLineBytes bounds one input line (RFC 5322 §2.1.1 says 998; real clients exceed it, so the
	// default is generous, but header parsing holds a line in memory). 0 means 1 MiB.
	MaxLineBytes int
}

// Composer composes messages; it is safe for concurrent use.
type Composer struct {
	rand         io.Reader
	budget       *Budget
	maxBody      int64
	maxDepth     int
	maxLineBytes int
	bufs         sync.Pool // of *ioBuffers
}

// ioBuffers are the buffers one composition streams through. They are recycled: allocated afresh
// they were 96 KiB per message, most of what a relayed message cost the garbage collector.
type ioBuffers struct {
	r    *bufio.Reader
	w    *bufio.Writer
	copy []byte // for io.CopyBuffer of passed-through parts
}

func (c *Composer) buffers() *ioBuffers {
	if b, ok := c.bufs.Get().(*ioBuffers); ok {
		return b
	}
	return &ioBuffers{r: bufio.NewReaderSize(nil, 32<<10), w: bufio.NewWriterSize(nil, 32<<10), copy: make([]byte, 32<<10)}
}

// New builds a Composer.
func New(o Options) *Composer {
	c := &Composer{rand: o.Rand, budget: o.Budget, maxBody: o.MaxBodyBytes, maxDepth: o.MaxDepth, maxLineBytes: o.MaxLineBytes}
	if c.budget == nil {
		c.budget = NewBudget(0)
	}
	if c.rand == nil {
		c.rand = rand.Reader
	}
	if c.maxBody <= 0 {
		c.maxBody = 10 << 20
	}
	if c.maxDepth <= 0 {
		c.maxDepth = 32
	}
	if c.maxLineBytes <= 0 {
		c.maxLineBytes = 1 << 20
	}
	return c
}

// TicketHeader is the header a submitting application sets to give the ticket number; it is removed
// like every X-Mailgate-* header.
const TicketHeader = "X-Mailgate-Ticket"

// Compose reads the submitted message from src and writes the customer-facing message to dst. The
// input is expected with CRLF line endings (submission refuses bare LF); what mailgate writes uses
// CRLF, and passed-through parts keep their bytes. On error dst holds a partial message that the caller
// must discard (Draft.Abort).
func (c *Composer) Compose(ctx context.Context, src io.Reader, dst io.Writer, req Request) (Result, error) {
	if req.Channel == nil {
		return Result{}, errors.New("compose: request without a channel")
	}
	bufs := c.buffers()
	defer c.bufs.Put(bufs)
	bw := bufs.w
	bw.Reset(dst)
	defer bw.Reset(nil) // the pooled buffers keep no reference to this message's reader or writer
	j := &job{
		c:       c,
		ctx:     ctx,
		req:     req,
		ch:      req.Channel,
		out:     &countWriter{w: bw, limit: req.Channel.MaxMessageBytes, ctx: ctx},
		copyBuf: bufs.copy,
	}
	j.allowed = allowedSet(req.Channel.AllowedExtensions)
	guard := &lineGuard{r: src, max: c.maxLineBytes}
	j.guard = guard
	bufs.r.Reset(guard)
	defer bufs.r.Reset(nil)
	res, err := j.run(bufs.r)
	if err == nil {
		if ferr := bw.Flush(); ferr != nil {
			// The last buffered bytes could not be written (a full disk): the spool's fault, not the
			// message's, so temporary like every other output failure.
			err = &writeError{ferr}
		}
	}
	if err != nil {
		return Result{}, classify(err, guard)
	}
	res.Size = j.out.n
	return res, nil
}

// classify turns any failure into a *relay.Error: refusals pass, input read failures and output write
// failures are temporary local errors, and everything left is a parsing failure of the message.
func classify(err error, guard *lineGuard) error {
	if _, ok := relay.AsError(err); ok {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return relay.Wrap(err, 451, relay.CodeTempLocal, "local", "composition interrupted")
	}
	var we *writeError
	if errors.As(err, &we) {
		return relay.Wrap(err, 451, relay.CodeTempLocal, "local", "local error in processing")
	}
	if guard.err != nil && !errors.Is(guard.err, io.EOF) {
		return relay.Wrap(err, 451, relay.CodeTempLocal, "local", "local error in processing")
	}
	return relay.Wrap(err, 554, relay.CodeMalformed, "malformed", "malformed MIME message")
}

func malformed(format string, args ...any) *relay.Error {
	return relay.Errorf(554, relay.CodeMalformed, "malformed", format, args...)
}

// job is one composition in progress.
type job struct {
	c       *Composer
	ctx     context.Context
	req     Request
	ch      *Channel
	out     *countWriter
	allowed map[string]bool // nil = all extensions allowed
	guard   *lineGuard
	copyBuf []byte // for passed-through parts; the job's own while it runs

	ticket  string
	subject string
}

// hfield is one header field as it will be written: canonical key and raw bytes (with CRLF).
type hfield struct {
	key string
	raw []byte
}

func fieldsOf(h *textproto.Header) ([]hfield, error) {
	var fs []hfield
	for it := h.Fields(); it.Next(); {
		raw, err := it.Raw()
		if err != nil {
			return nil, err
		}
		fs = append(fs, hfield{key: it.Key(), raw: raw})
	}
	return fs, nil
}

// setField replaces the first field with key in place (dropping later duplicates), or appends it; a nil
// raw removes the field.
func setField(fs []hfield, key string, raw []byte) []hfield {
	out := fs[:0:0]
	done := false
	for _, f := range fs {
		if !strings.EqualFold(f.key, key) {
			out = append(out, f)
			continue
		}
		if !done && raw != nil {
			out = append(out, hfield{key: key, raw: raw})
		}
		done = true
	}
	if !done && raw != nil {
		out = append(out, hfield{key: key, raw: raw})
	}
	return out
}

func (j *job) writeFields(fs []hfield) error {
	for _, f := range fs {
		if _, err := j.out.Write(f.raw); err != nil {
			return err
		}
	}
	_, err := io.WriteString(j.out, "\r\n")
	return err
}

func (j *job) run(in *bufio.Reader) (Result, error) {
	h, err := textproto.ReadHeader(in)
	if err != nil {
		if j.guard.err != nil && !errors.Is(j.guard.err, io.EOF) {
			return Result{}, err // the spooled input failed, not the message: classify makes it 451
		}
		return Result{}, malformed("malformed message header")
	}
	ch := j.ch
	wd := &mime.WordDecoder{CharsetReader: charset.Reader}

	// Ticket number: the application's header wins over a tag already in the subject.
	rawSubject := h.Get("Subject")
	decodedSubject, err := wd.DecodeHeader(rawSubject)
	if err != nil {
		decodedSubject = rawSubject
	}
	decodedSubject = strings.Join(strings.Fields(sanitize(decodedSubject)), " ")
	if t := strings.TrimSpace(h.Get(TicketHeader)); t != "" {
		if !ValidTicket(t) {
			return Result{}, malformed("%s must be 1 to %d digits", TicketHeader, MaxTicketLen)
		}
		j.ticket = t
	} else if t, ok := ParseTicket(decodedSubject); ok {
		j.ticket = t
	}
	j.subject = FormatSubject(decodedSubject, j.ticket, ch.Ticket)

	threaded := h.Has("In-Reply-To") || h.Has("References")
	res := Result{
		Ticket:  j.ticket,
		Subject: j.subject,
		Reply:   j.ticket != "" || (threaded && ch.Threading != IgnoreInReplyTo),
	}

	// Owned fields.
	id, err := j.messageID()
	if err != nil {
		return Result{}, err
	}
	res.MessageID = id
	now := j.req.Now
	if now.IsZero() {
		now = time.Now()
	}
	loc := ch.Location
	if loc == nil {
		loc = time.UTC
	}
	owned := map[string][]byte{
		"From":       FoldHeader("From", FormatFrom(ch.DisplayName, ch.FromAddress)),
		"Date":       FoldHeader("Date", now.In(loc).Format("Mon, 02 Jan 2006 15:04:05 -0700")), // RFC 5322 §3.3
		"Message-Id": FoldHeader("Message-ID", "<"+id+">"),
	}
	if j.subject != decodedSubject {
		owned["Subject"] = FoldHeader("Subject", EncodeUnstructured(j.subject))
	}

	orig, err := fieldsOf(&h)
	if err != nil {
		return Result{}, malformed("malformed message header")
	}
	var fs []hfield
	seen := map[string]bool{}
	for _, f := range orig {
		switch {
		case strings.HasPrefix(strings.ToLower(f.key), "x-mailgate-"):
			continue // internal (DESIGN §3.7)
		case f.key == "Bcc":
			continue // RFC 5322 §3.6.3: blind recipients must not be shown to the others (as Postfix's cleanup does)
		case f.key == "Sender" || f.key == "Return-Path" || f.key == "Received":
			// Not the agent's to set (see agentForbidden): removed, the message is otherwise fine.
			continue
		case f.key == "X-Mailer" || f.key == "User-Agent":
			// The agent application's name and version are the contact center's internals, not the
			// customer's business (and tell an attacker which software to aim at).
			continue
		case strings.HasPrefix(strings.ToLower(f.key), "resent-"):
			return Result{}, relay.Errorf(550, relay.CodePolicy, "resent_header",
				"%s is not allowed: mailgate sends replies as the channel and does not resend messages", clip(f.key))
		}
		if raw, ok := owned[f.key]; ok {
			if !seen[f.key] {
				fs = append(fs, hfield{key: f.key, raw: raw})
			}
			seen[f.key] = true
			continue
		}
		if f.key == "Subject" {
			if seen["Subject"] {
				continue // one Subject (RFC 5322 §3.6)
			}
			seen["Subject"] = true
		}
		fs = append(fs, f)
	}
	var top []hfield
	for _, k := range []string{"From", "Date", "Message-Id", "Subject"} {
		if raw, ok := owned[k]; ok && !seen[k] && (k != "Subject" || j.subject != "") {
			top = append(top, hfield{key: k, raw: raw})
		}
	}
	fs = append(top, fs...)

	e, err := j.entityOf(&h, true, false)
	if err != nil {
		return Result{}, err
	}
	if e.kind != kindPass && e.kind != kindMultipartPass && !h.Has("Mime-Version") {
		fs = append(fs, hfield{key: "Mime-Version", raw: []byte("MIME-Version: 1.0\r\n")})
	}
	if err := j.writeEntity(fs, e, in, 0, true); err != nil {
		return Result{}, err
	}
	return res, nil
}

// messageID makes the Message-ID (RFC 5322 §3.6.4) in the channel's domain: "t<ticket>." first when
// there is a ticket, so a customer's reply (whose In-Reply-To/References carry it) threads back to the
// ticket even if the subject was edited, then a timestamp and 80 random bits for uniqueness.
func (j *job) messageID() (string, error) {
	var rnd [10]byte
	if _, err := io.ReadFull(j.c.rand, rnd[:]); err != nil {
		return "", relay.Wrap(err, 451, relay.CodeTempLocal, "local", "local error in processing")
	}
	now := j.req.Now
	if now.IsZero() {
		now = time.Now()
	}
	local := now.UTC().Format("20060102150405") + "." + hex.EncodeToString(rnd[:])
	if j.ticket != "" {
		local = "t" + j.ticket + "." + local
	}
	return local + "@" + j.ch.domain(), nil
}

// boundary makes a MIME boundary for a multipart mailgate creates. "=_" cannot occur in
// quoted-printable or base64 output (RFC 2045 §6.7, §6.8), the encodings of everything inside.
func (j *job) boundary() (string, error) {
	var rnd [12]byte
	if _, err := io.ReadFull(j.c.rand, rnd[:]); err != nil {
		return "", relay.Wrap(err, 451, relay.CodeTempLocal, "local", "local error in processing")
	}
	return "=_mailgate_" + hex.EncodeToString(rnd[:]), nil
}

// writeError marks a failure of the output writer (as opposed to the input).
type writeError struct{ err error }

func (e *writeError) Error() string { return "write: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// countWriter counts the composed bytes and refuses to go over the channel's limit.
type countWriter struct {
	w     io.Writer
	n     int64
	limit int64
	ctx   context.Context
}

func (w *countWriter) Write(p []byte) (int, error) {
	if err := w.ctx.Err(); err != nil {
		return 0, err
	}
	if w.limit > 0 && w.n+int64(len(p)) > w.limit {
		return 0, relay.Errorf(552, relay.CodeTooBig, "size",
			"message too big: over %d bytes after composition (the channel's transport limit)", w.limit)
	}
	n, err := w.w.Write(p)
	w.n += int64(n)
	if err != nil {
		return n, &writeError{err}
	}
	return n, nil
}

// lineGuard refuses input lines longer than max (header parsing holds a line in memory) and remembers
// the input's own read error, which is a local failure, not the sender's.
type lineGuard struct {
	r   io.Reader
	max int
	cur int   // bytes since the last LF
	n   int64 // bytes read so far
	err error
}

func (g *lineGuard) Read(p []byte) (int, error) {
	n, err := g.r.Read(p)
	g.n += int64(n)
	rest := p[:n]
	for {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			g.cur += len(rest)
			break
		}
		if g.cur+i > g.max {
			return 0, malformed("line longer than %d bytes", g.max)
		}
		g.cur = 0
		rest = rest[i+1:]
	}
	if g.cur > g.max {
		return 0, malformed("line longer than %d bytes", g.max)
	}
	if err != nil && g.err == nil {
		g.err = err
	}
	return n, err
}
