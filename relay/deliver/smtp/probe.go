package smtp

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"

	"github.com/mailgate/mailgate/auth/xoauth2"
	"github.com/mailgate/mailgate/relay"
)

// ProbeReport is what Probe found on a fresh connection, for `mailgate test-send` to print before it
// sends. It holds no secret: the token and password never appear, only the outcome of AUTH.
type ProbeReport struct {
	Server string // configured name
	Addr   string // host:port dialled
	Banner string // the 220 greeting
	// TLS is "none", "starttls" or "implicit"; TLSVersion e.g. "TLS 1.3".
	TLS        string
	TLSVersion string
	// CertVerified says the certificate is valid for CertName under the configured roots; CertError is
	// the verification failure otherwise.
	CertVerified bool
	CertName     string
	CertError    string
	// StartTLSRefused is the server's reply when it advertised STARTTLS and then refused it.
	StartTLSRefused string
	// AuthOffered lists the AUTH mechanisms offered on the session used (after STARTTLS).
	AuthOffered []string
	// MaxSize is the upstream's SIZE (0 = not advertised).
	MaxSize int64
	// AuthMechanism is the mechanism used ("" when auth is none); AuthResult "ok", "not configured" or
	// the failure; TokenFailure the XOAUTH2 server's decoded refusal, if any.
	AuthMechanism string
	AuthResult    string
	TokenFailure  *xoauth2.Failure
}

// String renders the report as the lines test-send prints.
func (r *ProbeReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "server:        %s (%s)\n", r.Server, r.Addr)
	fmt.Fprintf(&b, "banner:        %s\n", r.Banner)
	tlsLine := r.TLS
	if r.TLSVersion != "" {
		tlsLine += ", " + r.TLSVersion
	}
	if r.StartTLSRefused != "" {
		tlsLine += ", STARTTLS refused: " + r.StartTLSRefused
	}
	fmt.Fprintf(&b, "tls:           %s\n", tlsLine)
	if r.TLS != tlsNone && r.TLS != "" {
		if r.CertVerified {
			fmt.Fprintf(&b, "certificate:   verified for %s\n", r.CertName)
		} else {
			fmt.Fprintf(&b, "certificate:   NOT verified for %s: %s\n", r.CertName, r.CertError)
		}
	}
	fmt.Fprintf(&b, "auth offered:  %s\n", mechList(r.AuthOffered))
	if r.MaxSize > 0 {
		fmt.Fprintf(&b, "size limit:    %d bytes\n", r.MaxSize)
	}
	auth := r.AuthResult
	if r.AuthMechanism != "" {
		auth = r.AuthMechanism + ": " + auth
	}
	if r.TokenFailure != nil {
		auth += " (token refused: " + r.TokenFailure.String() + ")"
	}
	fmt.Fprintf(&b, "auth:          %s\n", auth)
	return b.String()
}

// Probe opens a fresh session exactly as Deliver would for a message with the given Force TLS, and
// reports what it found. The error is the *relay.Error Deliver would have given every recipient. A
// healthy session is left in the pool, so a Deliver right after reuses it.
func (t *Transport) Probe(ctx context.Context, forceTLS bool) (*ProbeReport, error) {
	r := &ProbeReport{Server: t.o.Name, Addr: t.addr, CertName: t.o.TLSServerName, TLS: tlsNone, AuthResult: "not configured"}
	if err := t.b.acquire(ctx); err != nil {
		return r, t.classify(err, relay.StageConnect)
	}
	defer t.b.release()
	s, err := t.dial(ctx, forceTLS, true)
	if s != nil {
		r.Banner, r.TLS, r.AuthOffered, r.MaxSize = s.banner, s.tlsMode, s.mechs, s.maxSize
		r.StartTLSRefused = s.startTLSErr
		if s.tlsVersion != 0 {
			r.TLSVersion = tlsVersionName(s.tlsVersion)
		}
		if s.tlsVersion != 0 || s.certErr != nil {
			r.CertVerified = s.certErr == nil
			if s.certErr != nil {
				r.CertError = s.certErr.Error()
			}
		}
		r.AuthMechanism, r.TokenFailure = s.authMech, s.tokenFail
	}
	if t.o.Auth != AuthNone {
		r.AuthResult = "ok"
		if err != nil {
			r.AuthResult = "not completed: " + err.Error()
		}
	}
	if err != nil {
		return r, err
	}
	t.put(s)
	return r, nil
}

func tlsVersionName(v uint16) string { return tls.VersionName(v) }
