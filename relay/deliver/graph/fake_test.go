package graph_test

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/deliver/graph"
)

// fakeGraph is Microsoft Graph's mail API as far as mailgate uses it, over TLS: sendMail, drafts from
// MIME, file attachments posted whole or through upload sessions, send and delete. It checks every
// bearer token as Graph does — RS256 signature against the (Entra-like) mock's JWKS, issuer, expiry,
// audience https://graph.microsoft.com and the Mail.Send permission — refuses any request over 4 MB
// (413), and counts requests in flight per mailbox. Error shapes are Graph's: {"error": {"code",
// "message"}} with a request-id header.
type fakeGraph struct {
	t      *testing.T
	srv    *httptest.Server
	jwks   string
	issuer string

	mu          sync.Mutex
	keys        map[string]*rsa.PublicKey
	sent        [][]byte // MIME of each sendMail
	drafts      map[string]*fakeDraft
	sentDrafts  []*fakeDraft
	sessions    map[string]*fakeUpload
	nextID      int
	throttle    int    // the next N requests answer 429
	retryAfter  string // with this Retry-After
	inflight    int
	maxInflight int
	largest     int64    // largest request body seen
	steps       []string // method and route of each request
	hold        chan struct{}
	failNext    *fakeFailure
	failAt      int // the request with this number (1-based, counting every request) answers 429
}

type fakeDraft struct {
	ID          string
	MIME        []byte
	Attachments []fakeAttachment
	deleted     bool
}

type fakeAttachment struct {
	Name, ContentType, ContentID string
	Inline                       bool
	Content                      []byte
	ViaSession                   bool
}

type fakeUpload struct {
	draft *fakeDraft
	att   fakeAttachment
	size  int64
}

type fakeFailure struct {
	status     int
	code, msg  string
	retryAfter string
}

// knownMailboxes: box is a licensed Exchange Online mailbox; onprem exists but is not enabled for REST.
var knownMailboxes = map[string]bool{"box@contoso.example": true, "onprem@contoso.example": false}

func newFakeGraph(t *testing.T, jwksURL, issuer string) *fakeGraph {
	f := &fakeGraph{t: t, jwks: jwksURL, issuer: issuer, keys: map[string]*rsa.PublicKey{},
		drafts: map[string]*fakeDraft{}, sessions: map[string]*fakeUpload{}}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

var (
	reUser    = regexp.MustCompile(`^/v1\.0/users/([^/]+)(/.*)$`)
	reMessage = regexp.MustCompile(`^/messages/([^/]+)(/.*)?$`)
)

func (f *fakeGraph) fail(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("request-id", fmt.Sprintf("req-%d", time.Now().UnixNano()))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func (f *fakeGraph) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, graph.MaxRequestBytes+1))
	if err != nil {
		f.fail(w, 400, "BadRequest", err.Error())
		return
	}
	f.mu.Lock()
	f.steps = append(f.steps, r.Method+" "+routeOf(r.URL.Path))
	f.largest = max(f.largest, int64(len(body)))
	if f.throttle > 0 || (f.failAt > 0 && len(f.steps) == f.failAt) {
		f.throttle = max(0, f.throttle-1)
		f.mu.Unlock()
		w.Header().Set("Retry-After", f.retryAfter)
		f.fail(w, http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
		return
	}
	f.mu.Unlock()
	if len(body) > graph.MaxRequestBytes {
		f.fail(w, http.StatusRequestEntityTooLarge, "RequestEntityTooLarge", "The maximum request length supported is 4MB.")
		return
	}
	if strings.HasPrefix(r.URL.Path, "/upload/") {
		f.upload(w, r, body)
		return
	}
	m := reUser.FindStringSubmatch(r.URL.Path)
	if m == nil {
		f.fail(w, 404, "ResourceNotFound", "no such route")
		return
	}
	if status, code := f.authorize(r); status != 0 {
		f.fail(w, status, code, "Access is denied. Check credentials and try again.")
		return
	}
	enabled, ok := knownMailboxes[m[1]]
	switch {
	case !ok:
		f.fail(w, 404, "ErrorInvalidUser", "The requested user '"+m[1]+"' is invalid.")
		return
	case !enabled:
		f.fail(w, 404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-deleted, or is hosted on-premise.")
		return
	}
	f.mu.Lock()
	f.inflight++
	f.maxInflight = max(f.maxInflight, f.inflight)
	hold, failure := f.hold, f.failNext
	f.failNext = nil
	f.mu.Unlock()
	defer func() { f.mu.Lock(); f.inflight--; f.mu.Unlock() }()
	if hold != nil {
		<-hold
	}
	if failure != nil {
		if failure.retryAfter != "" {
			w.Header().Set("Retry-After", failure.retryAfter)
		}
		f.fail(w, failure.status, failure.code, failure.msg)
		return
	}
	f.route(w, r, m[2], body)
}

func routeOf(p string) string {
	if strings.HasPrefix(p, "/upload/") {
		return "/upload"
	}
	if m := reUser.FindStringSubmatch(p); m != nil {
		return reMessage.ReplaceAllString(m[2], "/messages/{id}$2")
	}
	return p
}

func (f *fakeGraph) route(w http.ResponseWriter, r *http.Request, path string, body []byte) {
	decodeMIME := func() ([]byte, bool) {
		if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			f.fail(w, 415, "ErrorMimeContentInvalid", "MIME must be sent as text/plain, got "+ct)
			return nil, false
		}
		raw, err := base64.StdEncoding.DecodeString(string(body))
		if err != nil {
			f.fail(w, 400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.")
			return nil, false
		}
		return raw, true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch mm := reMessage.FindStringSubmatch(path); {
	case r.Method == "POST" && path == "/sendMail":
		raw, ok := decodeMIME()
		if ok {
			f.sent = append(f.sent, raw)
			w.Header().Set("request-id", "sent-"+strconv.Itoa(len(f.sent)))
			w.WriteHeader(http.StatusAccepted)
		}
	case r.Method == "POST" && path == "/messages":
		raw, ok := decodeMIME()
		if ok {
			f.nextID++
			d := &fakeDraft{ID: fmt.Sprintf("AAMk%d=", f.nextID), MIME: raw}
			f.drafts[d.ID] = d
			w.WriteHeader(http.StatusCreated)
			_ = json.NewEncoder(w).Encode(map[string]string{"id": d.ID})
		}
	case mm != nil:
		d := f.drafts[mm[1]]
		if d == nil || d.deleted {
			f.fail(w, 404, "ErrorItemNotFound", "The specified object was not found in the store.")
			return
		}
		switch {
		case r.Method == "POST" && mm[2] == "/attachments":
			var a struct {
				Type         string `json:"@odata.type"`
				Name         string `json:"name"`
				ContentType  string `json:"contentType"`
				ContentBytes []byte `json:"contentBytes"`
				IsInline     bool   `json:"isInline"`
				ContentID    string `json:"contentId"`
			}
			if err := json.Unmarshal(body, &a); err != nil || a.Type != "#microsoft.graph.fileAttachment" {
				f.fail(w, 400, "ErrorInvalidRequest", "bad attachment")
				return
			}
			if len(a.ContentBytes) >= 3<<20 {
				f.fail(w, 413, "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize", "use an upload session from 3 MB")
				return
			}
			d.Attachments = append(d.Attachments, fakeAttachment{Name: a.Name, ContentType: a.ContentType, ContentID: a.ContentID, Inline: a.IsInline, Content: a.ContentBytes})
			w.WriteHeader(http.StatusCreated)
			_, _ = w.Write([]byte(`{"id":"att"}`))
		case r.Method == "POST" && mm[2] == "/attachments/createUploadSession":
			var req struct {
				Item struct {
					Type        string `json:"attachmentType"`
					Name        string `json:"name"`
					Size        int64  `json:"size"`
					ContentType string `json:"contentType"`
					IsInline    bool   `json:"isInline"`
					ContentID   string `json:"contentId"`
				} `json:"AttachmentItem"`
			}
			if err := json.Unmarshal(body, &req); err != nil || req.Item.Type != "file" || req.Item.Size <= 0 {
				f.fail(w, 400, "ErrorInvalidRequest", "bad AttachmentItem")
				return
			}
			f.nextID++
			sid := strconv.Itoa(f.nextID)
			f.sessions[sid] = &fakeUpload{draft: d, size: req.Item.Size, att: fakeAttachment{Name: req.Item.Name,
				ContentType: req.Item.ContentType, ContentID: req.Item.ContentID, Inline: req.Item.IsInline, ViaSession: true}}
			w.WriteHeader(http.StatusCreated)
			_ = json.NewEncoder(w).Encode(map[string]any{"uploadUrl": f.srv.URL + "/upload/" + sid + "?authtoken=session-secret-" + sid,
				"nextExpectedRanges": []string{"0-"}})
		case r.Method == "POST" && mm[2] == "/send":
			d.deleted = true // a sent draft leaves Drafts
			f.sentDrafts = append(f.sentDrafts, d)
			w.WriteHeader(http.StatusAccepted)
		case r.Method == "DELETE" && mm[2] == "":
			d.deleted = true
			w.WriteHeader(http.StatusNoContent)
		default:
			f.fail(w, 405, "ErrorInvalidRequest", "unsupported")
		}
	default:
		f.fail(w, 405, "ErrorInvalidRequest", "unsupported "+r.Method+" "+path)
	}
}

var reRange = regexp.MustCompile(`^bytes (\d+)-(\d+)/(\d+)$`)

// upload is one PUT of an upload session: it must carry no bearer token (the URL authorises it) and
// continue exactly where the previous one stopped.
func (f *fakeGraph) upload(w http.ResponseWriter, r *http.Request, body []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sid := strings.TrimPrefix(r.URL.Path, "/upload/")
	s := f.sessions[sid]
	if s == nil || r.URL.Query().Get("authtoken") != "session-secret-"+sid {
		f.fail(w, 404, "ErrorItemNotFound", "no such upload session")
		return
	}
	if r.Header.Get("Authorization") != "" {
		f.fail(w, 401, "InvalidAuthenticationToken", "an upload URL must not be sent an Authorization header")
		return
	}
	m := reRange.FindStringSubmatch(r.Header.Get("Content-Range"))
	if m == nil || r.Method != "PUT" {
		f.fail(w, 400, "InvalidRange", "bad Content-Range")
		return
	}
	from, _ := strconv.ParseInt(m[1], 10, 64)
	to, _ := strconv.ParseInt(m[2], 10, 64)
	total, _ := strconv.ParseInt(m[3], 10, 64)
	if from != int64(len(s.att.Content)) || to-from+1 != int64(len(body)) || total != s.size {
		f.fail(w, 416, "InvalidRange", fmt.Sprintf("expected bytes from %d of %d", len(s.att.Content), s.size))
		return
	}
	s.att.Content = append(s.att.Content, body...)
	if int64(len(s.att.Content)) < s.size {
		w.WriteHeader(http.StatusOK)
		_ = json.NewEncoder(w).Encode(map[string]any{"nextExpectedRanges": []string{fmt.Sprintf("%d-", len(s.att.Content))}})
		return
	}
	s.draft.Attachments = append(s.draft.Attachments, s.att)
	delete(f.sessions, sid)
	w.Header().Set("Location", f.srv.URL+"/v1.0/attachments/"+sid)
	w.WriteHeader(http.StatusCreated)
}

// authorize checks the bearer token as Graph does: 401 for a token that is not Graph's (signature,
// issuer, expiry, audience), 403 ErrorAccessDenied for one without the Mail.Send permission.
func (f *fakeGraph) authorize(r *http.Request) (int, string) {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return 401, "InvalidAuthenticationToken"
	}
	claims, err := f.verify(tok)
	if err != nil {
		f.t.Logf("fake graph: token refused: %v", err)
		return 401, "InvalidAuthenticationToken"
	}
	if claims.Aud != graph.Audience {
		f.t.Logf("fake graph: token audience %q", claims.Aud)
		return 401, "InvalidAuthenticationToken"
	}
	for _, role := range claims.Roles {
		if role == "Mail.Send" {
			return 0, ""
		}
	}
	for _, s := range strings.Fields(claims.Scp) {
		if s == "Mail.Send" {
			return 0, ""
		}
	}
	return 403, "ErrorAccessDenied"
}

type jwtClaims struct {
	Iss   string   `json:"iss"`
	Aud   string   `json:"aud"`
	Exp   int64    `json:"exp"`
	Roles []string `json:"roles"`
	Scp   string   `json:"scp"`
}

func (f *fakeGraph) verify(tok string) (*jwtClaims, error) {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("not a JWT")
	}
	var hdr struct{ Alg, Kid string }
	var claims jwtClaims
	for i, v := range []any{&hdr, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(b, v); err != nil {
			return nil, err
		}
	}
	if hdr.Alg != "RS256" {
		return nil, fmt.Errorf("alg %s", hdr.Alg)
	}
	key, err := f.key(hdr.Kid)
	if err != nil {
		return nil, err
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(key, crypto.SHA256, sum[:], sig); err != nil {
		return nil, err
	}
	if claims.Iss != f.issuer || time.Unix(claims.Exp, 0).Before(time.Now()) {
		return nil, fmt.Errorf("issuer %q or expiry %d", claims.Iss, claims.Exp)
	}
	return &claims, nil
}

// key returns the JWKS key kid, fetching the key set from the mock on a miss.
func (f *fakeGraph) key(kid string) (*rsa.PublicKey, error) {
	f.mu.Lock()
	k := f.keys[kid]
	f.mu.Unlock()
	if k != nil {
		return k, nil
	}
	resp, err := http.Get(f.jwks)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct{ Kid, N, E string } `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, jk := range set.Keys {
		n, err1 := base64.RawURLEncoding.DecodeString(jk.N)
		e, err2 := base64.RawURLEncoding.DecodeString(jk.E)
		if err1 != nil || err2 != nil {
			continue
		}
		f.keys[jk.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	if f.keys[kid] == nil {
		return nil, fmt.Errorf("unknown kid %q", kid)
	}
	return f.keys[kid], nil
}

// poolOf trusts the fake's TLS certificate (and nothing else).
func poolOf(f *fakeGraph) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(f.srv.Certificate())
	return p
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
