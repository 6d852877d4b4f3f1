package peertest

import (
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
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

// GraphFake is Microsoft Graph's mail API as far as mailgate uses it, over TLS (httptest: Graph has no
// local emulator, so this stands in for it, with its documented shapes and limits): sendMail, drafts from
// MIME, file attachments posted whole or through upload sessions, send and delete. It checks every
// bearer token as Graph does — RS256 signature against the (Entra-like) mock's JWKS, issuer, expiry,
// audience https://graph.microsoft.com and the Mail.Send permission — refuses any request over 4 MB
// (413), and counts requests in flight per mailbox. Error shapes are Graph's: {"error": {"code",
// "message"}} with a request-id header.
// Fields set by tests (Throttle, RetryAfter, FailNext, FailAt, Hold) and read by them (the rest) are
// guarded by Mu while requests may be in flight.
type GraphFake struct {
	t      testing.TB
	Srv    *httptest.Server
	jwks   string
	issuer string

	Mu          sync.Mutex
	keys        map[string]*rsa.PublicKey
	Sent        [][]byte // MIME of each sendMail
	Drafts      map[string]*GraphDraft
	SentDrafts  []*GraphDraft
	sessions    map[string]*fakeUpload
	nextID      int
	Throttle    int    // the next N requests answer 429
	RetryAfter  string // with this Retry-After
	Inflight    int    // requests to a mailbox in flight now, and at most so far
	MaxInflight int
	Largest     int64         // largest request body seen
	Steps       []string      // method and route of each request
	Hold        chan struct{} // when set, mailbox requests wait until it is closed
	FailNext    *GraphFailure // the next mailbox request answers this
	FailAt      int           // the request with this number (1-based, counting every request) answers 429
}

// GraphDraft is a message created from MIME (POST /users/{id}/messages) and what was attached to it.
type GraphDraft struct {
	ID          string
	MIME        []byte
	Attachments []GraphAttachment
	Deleted     bool // sent or deleted: no longer in Drafts
}

// GraphAttachment is a file attached to a draft, posted whole or uploaded through a session.
type GraphAttachment struct {
	Name, ContentType, ContentID string
	Inline                       bool
	Content                      []byte
	ViaSession                   bool
}

type fakeUpload struct {
	draft *GraphDraft
	att   GraphAttachment
	size  int64
}

// GraphFailure is an error answer the fake gives once (GraphFake.FailNext).
type GraphFailure struct {
	Status     int
	Code, Msg  string
	RetryAfter string
}

// graphMailboxes: box is a licensed Exchange Online mailbox; onprem exists but is not enabled for REST.
var graphMailboxes = map[string]bool{"box@contoso.example": true, "onprem@contoso.example": false}

// NewGraphFake starts the fake on loopback; tokens are verified against jwksURL (an EntraMock's /jwks)
// and issuer. It stops when the test ends.
func NewGraphFake(t testing.TB, jwksURL, issuer string) *GraphFake {
	f := &GraphFake{t: t, jwks: jwksURL, issuer: issuer, keys: map[string]*rsa.PublicKey{},
		Drafts: map[string]*GraphDraft{}, sessions: map[string]*fakeUpload{}}
	f.Srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Srv.Close)
	return f
}

var (
	reUser    = regexp.MustCompile(`^/v1\.0/users/([^/]+)(/.*)$`)
	reMessage = regexp.MustCompile(`^/messages/([^/]+)(/.*)?$`)
)

func (f *GraphFake) fail(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("request-id", fmt.Sprintf("req-%d", time.Now().UnixNano()))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func (f *GraphFake) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, graph.MaxRequestBytes+1))
	if err != nil {
		f.fail(w, 400, "BadRequest", err.Error())
		return
	}
	f.Mu.Lock()
	f.Steps = append(f.Steps, r.Method+" "+routeOf(r.URL.Path))
	f.Largest = max(f.Largest, int64(len(body)))
	if f.Throttle > 0 || (f.FailAt > 0 && len(f.Steps) == f.FailAt) {
		f.Throttle = max(0, f.Throttle-1)
		f.Mu.Unlock()
		w.Header().Set("Retry-After", f.RetryAfter)
		f.fail(w, http.StatusTooManyRequests, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
		return
	}
	f.Mu.Unlock()
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
	enabled, ok := graphMailboxes[m[1]]
	switch {
	case !ok:
		f.fail(w, 404, "ErrorInvalidUser", "The requested user '"+m[1]+"' is invalid.")
		return
	case !enabled:
		f.fail(w, 404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive, soft-Deleted, or is hosted on-premise.")
		return
	}
	f.Mu.Lock()
	f.Inflight++
	f.MaxInflight = max(f.MaxInflight, f.Inflight)
	hold, failure := f.Hold, f.FailNext
	f.FailNext = nil
	f.Mu.Unlock()
	defer func() { f.Mu.Lock(); f.Inflight--; f.Mu.Unlock() }()
	if hold != nil {
		<-hold
	}
	if failure != nil {
		if failure.RetryAfter != "" {
			w.Header().Set("Retry-After", failure.RetryAfter)
		}
		f.fail(w, failure.Status, failure.Code, failure.Msg)
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

func (f *GraphFake) route(w http.ResponseWriter, r *http.Request, path string, body []byte) {
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
	f.Mu.Lock()
	defer f.Mu.Unlock()
	switch mm := reMessage.FindStringSubmatch(path); {
	case r.Method == "POST" && path == "/sendMail":
		raw, ok := decodeMIME()
		if ok {
			f.Sent = append(f.Sent, raw)
			w.Header().Set("request-id", "sent-"+strconv.Itoa(len(f.Sent)))
			w.WriteHeader(http.StatusAccepted)
		}
	case r.Method == "POST" && path == "/messages":
		raw, ok := decodeMIME()
		if ok {
			f.nextID++
			d := &GraphDraft{ID: fmt.Sprintf("AAMk%d=", f.nextID), MIME: raw}
			f.Drafts[d.ID] = d
			w.WriteHeader(http.StatusCreated)
			_ = json.NewEncoder(w).Encode(map[string]string{"id": d.ID})
		}
	case mm != nil:
		d := f.Drafts[mm[1]]
		if d == nil || d.Deleted {
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
			d.Attachments = append(d.Attachments, GraphAttachment{Name: a.Name, ContentType: a.ContentType, ContentID: a.ContentID, Inline: a.IsInline, Content: a.ContentBytes})
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
			f.sessions[sid] = &fakeUpload{draft: d, size: req.Item.Size, att: GraphAttachment{Name: req.Item.Name,
				ContentType: req.Item.ContentType, ContentID: req.Item.ContentID, Inline: req.Item.IsInline, ViaSession: true}}
			w.WriteHeader(http.StatusCreated)
			_ = json.NewEncoder(w).Encode(map[string]any{"uploadUrl": f.Srv.URL + "/upload/" + sid + "?authtoken=session-secret-" + sid,
				"nextExpectedRanges": []string{"0-"}})
		case r.Method == "POST" && mm[2] == "/send":
			d.Deleted = true // a sent draft leaves Drafts
			f.SentDrafts = append(f.SentDrafts, d)
			w.WriteHeader(http.StatusAccepted)
		case r.Method == "DELETE" && mm[2] == "":
			d.Deleted = true
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
func (f *GraphFake) upload(w http.ResponseWriter, r *http.Request, body []byte) {
	f.Mu.Lock()
	defer f.Mu.Unlock()
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
	w.Header().Set("Location", f.Srv.URL+"/v1.0/attachments/"+sid)
	w.WriteHeader(http.StatusCreated)
}

// authorize checks the bearer token as Graph does: 401 for a token that is not Graph's (signature,
// issuer, expiry, audience), 403 ErrorAccessDenied for one without the Mail.Send permission.
func (f *GraphFake) authorize(r *http.Request) (int, string) {
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

func (f *GraphFake) verify(tok string) (*jwtClaims, error) {
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
func (f *GraphFake) key(kid string) (*rsa.PublicKey, error) {
	f.Mu.Lock()
	k := f.keys[kid]
	f.Mu.Unlock()
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
	f.Mu.Lock()
	defer f.Mu.Unlock()
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

// Pool trusts the fake's TLS certificate (and nothing else).
func (f *GraphFake) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(f.Srv.Certificate())
	return p
}

// URL is the fake's Graph endpoint (the v1.0 base).
func (f *GraphFake) URL() string { return f.Srv.URL + "/v1.0" }

// SentMIME returns the MIME of each sendMail so far.
func (f *GraphFake) SentMIME() [][]byte {
	f.Mu.Lock()
	defer f.Mu.Unlock()
	return append([][]byte(nil), f.Sent...)
}
