// Package xoauth2 implements the XOAUTH2 SASL mechanism that Microsoft 365 (Exchange Online) and Gmail
// accept for SMTP AUTH with an OAuth 2.0 access token. go-sasl ships OAUTHBEARER (RFC 7628) but not
// XOAUTH2, which predates it and is what Exchange Online speaks.
//
// Wire format (Microsoft "Authenticate an IMAP, POP or SMTP connection using OAuth", Google "XOAUTH2
// protocol"): the client's initial response is
//
//	user=<mailbox> ^A auth=Bearer <access token> ^A ^A
//
// (^A is the byte 0x01). A server that accepts the token answers 235. A server that refuses it sends a
// 334 challenge carrying a base64 JSON object {"status":"401","schemes":"bearer","scope":"..."}; the
// client must answer it with an empty line, and the server then ends the exchange with 535. The client
// here records that JSON so the caller can tell an expired token (status 401, retry with a fresh one)
// from a missing scope (status 400 or 403, an operator's fix), and it always answers the challenge with
// an empty, non-nil response: go-smtp's client treats a nil response as "done" and would desynchronise
// the session (see LIBRARIES.md).
//
// The Server type is the other half, used by tests as an upstream that verifies tokens with a callback.
// The token is a bearer credential: neither half ever puts it in an error message.
package xoauth2

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-sasl"
)

// Mechanism is the SASL mechanism name as advertised in the EHLO AUTH line.
const Mechanism = "XOAUTH2"

// Failure is the JSON error a server sends in its 334 challenge when it refuses a token. Status is an
// HTTP-like code: "401" means the token is invalid or expired (get a new one), "400"/"403" usually mean
// the token lacks the scope in Scope (the app registration or consent must be fixed).
type Failure struct {
	Status  string `json:"status"`
	Schemes string `json:"schemes,omitempty"`
	Scope   string `json:"scope,omitempty"`
}

// String renders the failure for logs (it carries no credential).
func (f *Failure) String() string {
	if f == nil {
		return ""
	}
	return fmt.Sprintf("status=%s schemes=%s scope=%s", f.Status, f.Schemes, f.Scope)
}

// Client is an XOAUTH2 sasl.Client for one authentication attempt. Build a new one per attempt: it
// remembers the server's refusal so the caller can read it after Auth returns.
type Client struct {
	user    string
	token   string
	failure *Failure
	// challenged is set once the error challenge has been answered; a second challenge is a protocol
	// error (the server must end the exchange with a 5xx after our empty response).
	challenged bool
}

var _ sasl.Client = (*Client)(nil)

// NewClient returns a client that authenticates as mailbox with the OAuth 2.0 access token.
func NewClient(mailbox, token string) *Client {
	return &Client{user: mailbox, token: token}
}

// Start returns the mechanism and the initial response; the token travels only here.
func (c *Client) Start() (mech string, ir []byte, err error) {
	if strings.ContainsAny(c.user, "\x01\r\n") {
		return "", nil, errors.New("xoauth2: mailbox contains a control character")
	}
	if c.token == "" || strings.ContainsAny(c.token, "\x01\r\n ") {
		return "", nil, errors.New("xoauth2: access token is empty or malformed")
	}
	return Mechanism, InitialResponse(c.user, c.token), nil
}

// Next answers the server's error challenge with an empty response and records the decoded JSON. It
// never returns nil: an empty slice makes go-smtp send the empty line the mechanism requires, after
// which the server replies 535.
func (c *Client) Next(challenge []byte) ([]byte, error) {
	if c.challenged {
		return nil, sasl.ErrUnexpectedServerChallenge
	}
	c.challenged = true
	f := &Failure{}
	if err := json.Unmarshal(challenge, f); err != nil || f.Status == "" {
		// Not the documented JSON: keep what we can show without echoing arbitrary bytes at length.
		f = &Failure{Status: "unparsed"}
	}
	c.failure = f
	return []byte{}, nil
}

// Failure returns the server's decoded refusal, or nil if the server sent no error challenge.
func (c *Client) Failure() *Failure { return c.failure }

// InitialResponse builds the XOAUTH2 initial client response for mailbox and token.
func InitialResponse(mailbox, token string) []byte {
	return []byte("user=" + mailbox + "\x01auth=Bearer " + token + "\x01\x01")
}

// ErrMalformed is returned by ParseInitialResponse for a response that is not XOAUTH2.
var ErrMalformed = errors.New("xoauth2: malformed initial response")

// ParseInitialResponse splits an XOAUTH2 initial response into mailbox and token. It is strict about
// the framing (user= first, auth= second, the trailing ^A^A) and tolerant of the auth scheme's case, as
// the Bearer scheme is case-insensitive (RFC 6750 §2.1, RFC 7235 §2.1).
func ParseInitialResponse(ir []byte) (mailbox, token string, err error) {
	body, ok := bytes.CutSuffix(ir, []byte("\x01\x01"))
	if !ok {
		return "", "", ErrMalformed
	}
	user, auth, ok := bytes.Cut(body, []byte("\x01"))
	if !ok || bytes.IndexByte(auth, 0x01) >= 0 {
		return "", "", ErrMalformed
	}
	u, ok := bytes.CutPrefix(user, []byte("user="))
	if !ok {
		return "", "", ErrMalformed
	}
	a, ok := bytes.CutPrefix(auth, []byte("auth="))
	if !ok {
		return "", "", ErrMalformed
	}
	scheme, tok, ok := bytes.Cut(a, []byte(" "))
	if !ok || !strings.EqualFold(string(scheme), "Bearer") {
		return "", "", ErrMalformed
	}
	tok = bytes.TrimLeft(tok, " ")
	if len(tok) == 0 || len(u) == 0 || bytes.ContainsAny(tok, " \r\n\x00") || bytes.ContainsAny(u, "\r\n\x00") {
		return "", "", ErrMalformed
	}
	return string(u), string(tok), nil
}

// ErrRefused is what Server returns, after the client's empty response, when the token was refused.
var ErrRefused = errors.New("xoauth2: token refused")

// Verifier decides whether token is a valid access token for mailbox. Any error refuses the token.
type Verifier func(mailbox, token string) error

// Server is an XOAUTH2 sasl.Server: it verifies the token with Verify and, on refusal, sends Failure as
// the JSON challenge, waits for the client's empty response and then fails with Refused. Use one per
// AUTH command.
type Server struct {
	Verify Verifier
	// Failure is sent in the error challenge; zero = {"status":"401","schemes":"bearer"}.
	Failure Failure
	// Refused is returned after the empty response; nil = ErrRefused. A go-smtp backend passes
	// smtp.ErrAuthFailed so the client sees 535 5.7.8 rather than go-smtp's 454 for plain errors.
	Refused error
	// Mailbox is set once a token has been accepted.
	Mailbox string

	state int // 0 waiting for the initial response, 1 refused (waiting for the empty line), 2 done
}

var _ sasl.Server = (*Server)(nil)

// Next runs one step of the exchange.
func (s *Server) Next(response []byte) (challenge []byte, done bool, err error) {
	switch s.state {
	case 0:
		if response == nil {
			// No initial response (RFC 4954 §4): ask for it with an empty challenge.
			return []byte{}, false, nil
		}
		user, token, perr := ParseInitialResponse(response)
		if perr != nil {
			s.state = 2
			return nil, true, s.refused()
		}
		if s.Verify == nil || s.Verify(user, token) != nil {
			s.state = 1
			f := s.Failure
			if f.Status == "" {
				f = Failure{Status: "401", Schemes: "bearer"}
			}
			b, _ := json.Marshal(f)
			return b, false, nil
		}
		s.state = 2
		s.Mailbox = user
		return nil, true, nil
	case 1:
		s.state = 2
		if len(response) != 0 {
			return nil, true, sasl.ErrUnexpectedClientResponse
		}
		return nil, true, s.refused()
	default:
		return nil, true, sasl.ErrUnexpectedClientResponse
	}
}

func (s *Server) refused() error {
	if s.Refused != nil {
		return s.Refused
	}
	return ErrRefused
}
