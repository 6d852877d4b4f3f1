// Package graph delivers queued messages through Microsoft Graph's sendMail, as a relay.Transport: the
// second Microsoft transport, for tenants that keep SMTP AUTH disabled (DESIGN §4).
//
// Design:
//
//   - The composed message is sent as it is: its MIME, base64-encoded, as the text/plain body of
//     POST /users/{mailbox}/sendMail (https://learn.microsoft.com/graph/api/user-sendmail). Graph
//     answers 202 Accepted: accepted for delivery, not delivered. A request is at most 4 MB
//     (MaxRequestBytes), i.e. a MIME message of about 3 MB.
//   - Larger messages, up to the mailbox's size limit (35 MB by default), take Microsoft's documented
//     route for large attachments (https://learn.microsoft.com/graph/outlook-large-attachments):
//     the attachments are taken out of the MIME, a draft is created from what remains (POST
//     /users/{mailbox}/messages with the MIME, base64), each attachment is added to the draft — posted
//     whole under 3 MB, through an upload session (createUploadSession, then PUTs of at most 4 MB with
//     Content-Range and no Authorization header) from 3 MB — and the draft is sent (POST
//     .../messages/{id}/send, 202). An upload session cannot carry MIME: it only attaches files. A
//     draft left by a failure is deleted.
//   - Graph has no envelope: Exchange sends to the MIME's To, Cc and Bcc. Envelope recipients the header
//     does not name are added as Bcc (Exchange removes it from what recipients see). Every recipient
//     shares one outcome: Graph never refuses one address of a message.
//   - Shaping per mailbox, as relay/deliver/smtp does for SMTP and with the same parts
//     (relay/deliver/internal/shaping), kept across reloads in Budgets: at most 4 requests in flight
//     (one Deliver holds one slot for all its requests, and the queue gives the transport no more
//     workers than slots), 30 messages a minute (waits up to MaxShapingWait, else defers with
//     RetryAfter), 10,000 recipients a day (deferred with RetryAfter), and a quota answer pauses the
//     mailbox until its daily window frees up.
//   - Tokens come from a TokenSource (auth/oauth) with audience https://graph.microsoft.com: client
//     credentials with application permission Mail.Send, or delegated Mail.Send. A 401 invalidates the
//     token and retries once with a fresh one.
//   - Errors: every answer is classified once, in errors.go, into a *relay.Error that states its
//     relay.Fault (DESIGN §4): throttling (429/503 with Retry-After) and 5xx are temporary; the app's
//     permissions, the mailbox (ErrorAccessDenied, MailboxNotEnabledForRESTAPI, 401/403/404) are setup
//     faults, deferred and alerted with a remedy; size and MIME refusals bounce the message.
//   - TLS: Graph is HTTPS only, certificates always verified, TLS ≥ 1.2. A channel's Force TLS is
//     therefore always met on the hop mailgate controls.
//
// The access token lives only in the Authorization header of requests to the configured endpoint
// (never on upload URLs, which carry their own authorization): never logged, never in an error.
package graph

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-message/textproto"

	"github.com/mailgate/mailgate/relay"
)

// Transport sends through one mailbox's Graph sendMail. It is safe for concurrent use.
type Transport struct {
	o      Options
	host   string
	client *http.Client
	b      *budget

	mu     sync.Mutex
	closed bool
}

var _ relay.Transport = (*Transport)(nil)

// New validates o, applies the defaults and returns a Transport. It makes no request.
func New(o Options) (*Transport, error) {
	if err := o.setDefaults(); err != nil {
		return nil, fmt.Errorf("graph %q: %w", o.Name, err)
	}
	u, _ := url.Parse(o.Endpoint)
	budgets := o.Budgets
	if budgets == nil {
		budgets = NewBudgets()
	}
	tr := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: o.RootCAs},
		TLSHandshakeTimeout: 30 * time.Second,
		MaxIdleConnsPerHost: o.MaxConcurrent, // the slots bound requests in flight; keep that many connections warm
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	t := &Transport{o: o, host: u.Host, b: budgets.budget(&o),
		client: &http.Client{Transport: tr, Timeout: o.RequestTimeout,
			// A redirect would carry the bearer token to wherever it points: Graph does not redirect.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	return t, nil
}

// Name is the transport's configured name.
func (t *Transport) Name() string { return t.o.Name }

// MaxConnections is how many requests the transport has in flight at most: the queue gives it no
// more workers than this.
func (t *Transport) MaxConnections() int { return t.o.MaxConcurrent }

// MaxMessageBytes is the largest composed message the mailbox takes; submission refuses larger ones.
func (t *Transport) MaxMessageBytes() int64 { return t.o.MaxMessageBytes }

// Close refuses further deliveries and closes idle connections; in-flight ones finish.
func (t *Transport) Close() error {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.client.CloseIdleConnections()
	return nil
}

// Deliver sends m through the mailbox. Every recipient shares the outcome (see the package doc);
// Result.Reply names Graph's 202 and its request-id.
func (t *Transport) Deliver(ctx context.Context, m *relay.Message) relay.Result {
	n := len(m.Recipients)
	if n == 0 {
		return relay.Result{}
	}
	if err := t.precheck(m); err != nil {
		t.logFailure(m, err)
		return relay.Failed(n, err)
	}
	granted, dayStamp, dayWait := t.b.limits.ReserveRecipients(n, time.Now())
	if granted < n {
		// One message goes to all its recipients at once: it waits whole for the day's budget.
		t.b.limits.Refund(granted, dayStamp, 0)
		if dayWait <= 0 {
			dayWait = time.Minute
		}
		return relay.Failed(n, &relay.Error{Code: 451, Enhanced: "4.7.0", Reason: ReasonRateLimited, Fault: relay.FaultTemporary, RetryAfter: dayWait,
			Msg: fmt.Sprintf("recipients-per-day limit (%d) of mailbox %s reached; deferred", t.o.RecipientsPerDay, t.o.Name)})
	}
	minuteStamp, err := t.waitRate(ctx)
	if err != nil {
		t.b.limits.Refund(n, dayStamp, 0)
		return relay.Failed(n, err)
	}
	if err := t.b.slots.Acquire(ctx); err != nil {
		t.b.limits.Refund(n, dayStamp, minuteStamp)
		return relay.Failed(n, t.classify(err))
	}
	defer t.b.slots.Release()

	reply, err := t.send(ctx, m)
	if err != nil {
		re := t.classify(err)
		t.checkQuota(re)
		t.b.limits.Refund(n, dayStamp, minuteStamp)
		t.logFailure(m, re)
		return relay.Failed(n, re)
	}
	t.o.Logger.Debug("graph accepted the message", "server", t.o.Name, "queue_id", m.QueueID, "reply", reply)
	return relay.Result{Reply: reply, Errs: make([]error, n)}
}

// precheck refuses what needs no request: a closed transport, a paused mailbox, a message too big.
func (t *Transport) precheck(m *relay.Message) error {
	t.mu.Lock()
	closed := t.closed
	t.mu.Unlock()
	paused, until := t.b.limits.PausedFor(time.Now())
	switch {
	case closed:
		return &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal, Fault: relay.FaultTemporary, Msg: "transport is shutting down"}
	case paused > 0:
		return &relay.Error{Code: 451, Enhanced: "4.2.0", Reason: ReasonQuota, Fault: relay.FaultTemporary, RetryAfter: paused,
			Msg: fmt.Sprintf("mailbox %s paused after a quota answer until %s", t.o.Name, until.UTC().Format(time.RFC3339))}
	case m.Size > t.o.MaxMessageBytes:
		return &relay.Error{Code: 552, Enhanced: relay.CodeTooBig, Reason: ReasonSize, Fault: relay.FaultMessage, Stage: relay.StageData,
			Msg: fmt.Sprintf("message size %d exceeds the limit %d of mailbox %s", m.Size, t.o.MaxMessageBytes, t.o.Name)}
	case m.Open == nil:
		return &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal, Fault: relay.FaultTemporary, Msg: "message body unavailable"}
	}
	return nil
}

// waitRate takes one message from the per-minute budget, waiting up to MaxShapingWait; longer waits
// defer with RetryAfter so queue workers are not parked.
func (t *Transport) waitRate(ctx context.Context) (int64, error) {
	started := time.Now()
	stamp, wait, ok, err := t.b.limits.WaitMessage(ctx, t.o.MaxShapingWait)
	if ok && t.o.ShapingWait != nil {
		t.o.ShapingWait.Observe(time.Since(started).Seconds())
	}
	switch {
	case err != nil:
		return 0, t.classify(err)
	case !ok:
		return 0, &relay.Error{Code: 451, Enhanced: "4.7.0", Reason: ReasonRateLimited, Fault: relay.FaultTemporary, RetryAfter: wait,
			Msg: fmt.Sprintf("messages-per-minute limit (%d) of mailbox %s reached; deferred", t.o.MessagesPerMinute, t.o.Name)}
	}
	return stamp, nil
}

// checkQuota pauses the mailbox after a quota answer until its daily window frees up, and puts that
// wait on the error.
func (t *Transport) checkQuota(re *relay.Error) {
	if re.Reason == ReasonQuota {
		re.RetryAfter = t.b.limits.PauseForQuota(time.Now(), t.o.QuotaPause)
	}
}

// send reads the queued message and sends it by the route its size calls for.
func (t *Transport) send(ctx context.Context, m *relay.Message) (string, error) {
	body, err := m.Open()
	if err != nil {
		return "", &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal, Fault: relay.FaultTemporary,
			Msg: "cannot read the queued message", Err: err}
	}
	defer body.Close()
	// Small enough for one request? Read at most what one request can carry, plus one byte.
	head := make([]byte, 0, min(m.Size+1, MaxRequestBytes+1))
	buf := bytes.NewBuffer(head)
	if _, err := io.CopyN(buf, body, int64(base64.StdEncoding.DecodedLen(MaxRequestBytes))+1); err != nil && err != io.EOF {
		return "", &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal, Fault: relay.FaultTemporary,
			Msg: "cannot read the queued message", Err: err}
	}
	raw := buf.Bytes()
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		return "", &relay.Error{Code: 554, Enhanced: relay.CodeMalformed, Reason: ReasonRejected, Fault: relay.FaultMessage, Stage: relay.StageData,
			Msg: "the queued message has no readable header", Err: err}
	}
	bcc := bccFor(h, m.Recipients)
	if base64.StdEncoding.EncodedLen(len(bcc)+len(raw)) <= MaxRequestBytes {
		mimeMsg := append(bcc, raw...)
		return t.sendMail(ctx, mimeMsg)
	}
	return t.sendLarge(ctx, bcc, io.MultiReader(bytes.NewReader(raw), body))
}

// sendMail is POST /users/{mailbox}/sendMail with the MIME, base64: 202 = accepted.
func (t *Transport) sendMail(ctx context.Context, mimeMsg []byte) (string, error) {
	resp, err := t.do(ctx, "sendMail", http.MethodPost, t.userURL("/sendMail"), "text/plain", base64Body(mimeMsg))
	if err != nil {
		return "", err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusAccepted {
		return "", readAPIError(resp, "sendMail")
	}
	return accepted(resp), nil
}

// sendLarge is the draft route for a message over one request (see the package doc).
func (t *Transport) sendLarge(ctx context.Context, bcc []byte, msg io.Reader) (reply string, err error) {
	skeleton, atts, err := split(msg, t.o.TempDir)
	defer removeAll(atts)
	if err != nil {
		return "", &relay.Error{Code: 554, Enhanced: relay.CodeMalformed, Reason: ReasonRejected, Fault: relay.FaultMessage, Stage: relay.StageData,
			Msg: "the message's MIME structure cannot be split into a draft and attachments", Err: err}
	}
	draft := append(bcc, skeleton...)
	if base64.StdEncoding.EncodedLen(len(draft)) > MaxRequestBytes {
		return "", &relay.Error{Code: 552, Enhanced: relay.CodeTooBig, Reason: ReasonSize, Fault: relay.FaultMessage, Stage: relay.StageData,
			Msg: fmt.Sprintf("the message's text and headers alone (%d bytes) exceed what Microsoft Graph takes in one request", len(draft))}
	}
	id, err := t.createDraft(ctx, draft)
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			t.deleteDraft(id)
		}
	}()
	for _, a := range atts {
		if a.Size < uploadSessionMin {
			err = t.attachSmall(ctx, id, a)
		} else {
			err = t.attachLarge(ctx, id, a)
		}
		if err != nil {
			return "", err
		}
	}
	resp, err := t.do(ctx, "send", http.MethodPost, t.userURL("/messages/"+url.PathEscape(id)+"/send"), "", nil)
	if err != nil {
		return "", err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusAccepted {
		return "", readAPIError(resp, "send")
	}
	return accepted(resp) + fmt.Sprintf(" (draft with %d attachments)", len(atts)), nil
}

// createDraft is POST /users/{mailbox}/messages with the MIME, base64: 201 and the draft's id.
func (t *Transport) createDraft(ctx context.Context, mimeMsg []byte) (string, error) {
	resp, err := t.do(ctx, "createDraft", http.MethodPost, t.userURL("/messages"), "text/plain", base64Body(mimeMsg))
	if err != nil {
		return "", err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusCreated {
		return "", readAPIError(resp, "createDraft")
	}
	var d struct {
		ID string `json:"id"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&d); err != nil || d.ID == "" {
		return "", &apiError{Status: resp.StatusCode, Step: "createDraft", Message: "no draft id in the answer", RequestID: resp.Header.Get("request-id")}
	}
	return d.ID, nil
}

// attachSmall posts an attachment under 3 MB whole, as a fileAttachment.
func (t *Transport) attachSmall(ctx context.Context, id string, a *attachment) error {
	f, err := a.open()
	if err != nil {
		return &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal, Fault: relay.FaultTemporary, Msg: "cannot read an attachment", Err: err}
	}
	content, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal, Fault: relay.FaultTemporary, Msg: "cannot read an attachment", Err: err}
	}
	body, _ := json.Marshal(map[string]any{
		"@odata.type": "#microsoft.graph.fileAttachment", "name": a.Name, "contentType": a.ContentType,
		"contentBytes": content, "isInline": a.Inline, "contentId": a.ContentID,
	})
	resp, err := t.do(ctx, "attach", http.MethodPost, t.userURL("/messages/"+url.PathEscape(id)+"/attachments"), "application/json", bytesBody(body))
	if err != nil {
		return err
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusCreated {
		return readAPIError(resp, "attach")
	}
	return nil
}

// attachLarge adds an attachment of 3 MB or more through an upload session: PUTs of at most
// uploadChunkBytes to the session's URL, which carries its own authorization (no bearer token).
func (t *Transport) attachLarge(ctx context.Context, id string, a *attachment) error {
	req, _ := json.Marshal(map[string]any{"AttachmentItem": map[string]any{
		"attachmentType": "file", "name": a.Name, "size": a.Size, "contentType": a.ContentType,
		"isInline": a.Inline, "contentId": a.ContentID,
	}})
	resp, err := t.do(ctx, "uploadSession", http.MethodPost, t.userURL("/messages/"+url.PathEscape(id)+"/attachments/createUploadSession"), "application/json", bytesBody(req))
	if err != nil {
		return err
	}
	var sess struct {
		UploadURL string `json:"uploadUrl"`
	}
	status := resp.StatusCode
	if status != http.StatusCreated && status != http.StatusOK {
		defer drain(resp)
		return readAPIError(resp, "uploadSession")
	}
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&sess)
	drain(resp)
	u, perr := url.Parse(sess.UploadURL)
	if err != nil || perr != nil || u.Scheme != "https" || u.Host == "" {
		return &apiError{Status: status, Step: "uploadSession", Message: "no https uploadUrl in the answer"}
	}
	f, err := a.open()
	if err != nil {
		return &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal, Fault: relay.FaultTemporary, Msg: "cannot read an attachment", Err: err}
	}
	defer f.Close()
	chunk := make([]byte, uploadChunkBytes)
	for off := int64(0); off < a.Size; {
		k, err := io.ReadFull(f, chunk[:min(int64(len(chunk)), a.Size-off)])
		if err != nil {
			return &relay.Error{Code: 451, Enhanced: relay.CodeTempLocal, Reason: ReasonLocal, Fault: relay.FaultTemporary, Msg: "cannot read an attachment", Err: err}
		}
		rctx, cancel := context.WithTimeout(ctx, t.o.RequestTimeout)
		put, _ := http.NewRequestWithContext(rctx, http.MethodPut, sess.UploadURL, bytes.NewReader(chunk[:k]))
		put.ContentLength = int64(k)
		put.Header.Set("Content-Type", "application/octet-stream")
		put.Header.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+int64(k)-1, a.Size))
		resp, err := t.client.Do(put)
		if err != nil {
			cancel()
			return scrubURLError(err)
		}
		last := off+int64(k) == a.Size
		ok := (last && resp.StatusCode == http.StatusCreated) || (!last && resp.StatusCode == http.StatusOK)
		if !ok {
			ae := readAPIError(resp, "upload")
			drain(resp)
			cancel()
			return ae
		}
		drain(resp)
		cancel()
		off += int64(k)
	}
	return nil
}

// deleteDraft removes a draft a failed large send left behind (best effort, on its own deadline: the
// delivery's context may be what ended).
func (t *Transport) deleteDraft(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	resp, err := t.do(ctx, "deleteDraft", http.MethodDelete, t.userURL("/messages/"+url.PathEscape(id)), "", nil)
	if err != nil {
		t.o.Logger.Warn("graph draft left behind", "server", t.o.Name, "err", err)
		return
	}
	defer drain(resp)
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusNotFound {
		t.o.Logger.Warn("graph draft left behind", "server", t.o.Name, "err", readAPIError(resp, "deleteDraft"))
	}
}

// do sends one authorised request to the Graph endpoint. A 401 invalidates the token and is retried
// once with a fresh one (the request was not acted upon); the body is rebuilt for the retry.
func (t *Transport) do(ctx context.Context, step, method, u, contentType string, body func() (io.Reader, int64)) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		token, err := t.o.Tokens.Token(ctx)
		if err != nil {
			return nil, t.tokenError(err)
		}
		rctx, cancel := context.WithTimeout(ctx, t.o.RequestTimeout)
		var r io.Reader
		var n int64
		if body != nil {
			r, n = body()
		}
		req, err := http.NewRequestWithContext(rctx, method, u, r)
		if err != nil {
			cancel()
			return nil, err
		}
		req.ContentLength = n
		req.Header.Set("Authorization", "Bearer "+token)
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		resp, err := t.client.Do(req)
		if err != nil {
			cancel()
			return nil, scrubURLError(err)
		}
		resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 {
			drain(resp)
			t.o.Tokens.Invalidate(token)
			t.o.Logger.Info("graph refused the access token; retrying once with a fresh one", "server", t.o.Name, "step", step)
			continue
		}
		return resp, nil
	}
}

func (t *Transport) userURL(path string) string {
	return t.o.Endpoint + "/users/" + url.PathEscape(t.o.Mailbox) + path
}

// logFailure logs, at warn with the remedy, a failed delivery.
func (t *Transport) logFailure(m *relay.Message, err error) {
	re, ok := relay.AsError(err)
	if !ok {
		t.o.Logger.Warn("graph delivery failed", "server", t.o.Name, "queue_id", m.QueueID, "err", err)
		return
	}
	attrs := []any{"server", t.o.Name, "queue_id", m.QueueID, "code", re.Code, "enhanced", string(re.Enhanced),
		"reason", re.Reason, "fault", relay.Classify(re).String(), "err", re.Error()}
	if re.RetryAfter > 0 {
		attrs = append(attrs, "retry_after", re.RetryAfter.Round(time.Second).String())
	}
	if re.Remedy != "" {
		attrs = append(attrs, "remedy", re.Remedy)
	}
	t.o.Logger.Warn("graph delivery failed", attrs...)
}

func accepted(resp *http.Response) string {
	s := "202 Accepted by Microsoft Graph"
	if id := resp.Header.Get("request-id"); id != "" {
		s += " request-id " + id
	}
	return s
}

// base64Body returns a body builder for the MIME, base64-encoded (Graph's text/plain MIME body).
func base64Body(mimeMsg []byte) func() (io.Reader, int64) {
	enc := []byte(base64.StdEncoding.EncodeToString(mimeMsg))
	return bytesBody(enc)
}

func bytesBody(b []byte) func() (io.Reader, int64) {
	return func() (io.Reader, int64) { return bytes.NewReader(b), int64(len(b)) }
}

// drain reads a little of what is left so the connection can be reused, then closes the body.
func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10)
	resp.Body.Close()
}

// cancelBody ends a request's context when its body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c *cancelBody) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// scrubURLError keeps a *url.Error's cause and operation without its URL: upload URLs carry their own
// authorization in the query.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		var ne net.Error
		if errors.As(ue.Err, &ne) {
			return fmt.Errorf("%s: %w", ue.Op, ue.Err)
		}
		return fmt.Errorf("%s %s: %w", ue.Op, strings.SplitN(ue.URL, "?", 2)[0], ue.Err)
	}
	return err
}
