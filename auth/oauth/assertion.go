package oauth

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mailgate/mailgate/kms"
)

// ClientCertificate is a certificate credential of an app registration: the certificate uploaded to
// the app and its private key. Token requests then carry a client assertion (RFC 7523 §2.2, a JWT
// signed with the key, naming the certificate by its SHA-256 thumbprint in the x5t#S256 header, RFC
// 7515 §4.1.8) instead of a client secret. Microsoft no longer issues client secrets that never expire;
// certificates can be held in a KMS-sealed reference and rotated by thumbprint.
type ClientCertificate struct {
	Cert *x509.Certificate
	key  *rsa.PrivateKey
}

// ParseClientCertificate reads a PEM certificate and its PEM private key (PKCS #8 or PKCS #1), as held in
// a secret reference. Entra ID signs and verifies client assertions with RSA (RS256), so the key must be
// RSA and must belong to the certificate.
func ParseClientCertificate(certPEM []byte, keyPEM kms.Secret) (*ClientCertificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("client certificate: no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	kb, _ := pem.Decode([]byte(keyPEM.Reveal()))
	if kb == nil {
		return nil, errors.New("client key: no PEM block")
	}
	var key any
	switch kb.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(kb.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	default:
		return nil, fmt.Errorf("client key: PEM block %q, want PRIVATE KEY or RSA PRIVATE KEY", kb.Type)
	}
	if err != nil {
		return nil, errors.New("client key: not a readable private key") // never the parser's detail: it may quote key bytes
	}
	rk, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, errors.New("client key: Entra ID client assertions need an RSA key")
	}
	if pub, ok := cert.PublicKey.(*rsa.PublicKey); !ok || !pub.Equal(&rk.PublicKey) {
		return nil, errors.New("client key: does not belong to the client certificate")
	}
	return &ClientCertificate{Cert: cert, key: rk}, nil
}

// Thumbprint is the certificate's SHA-256 thumbprint as the x5t#S256 header carries it.
func (c *ClientCertificate) Thumbprint() string {
	sum := sha256.Sum256(c.Cert.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// assertionLifetime is how long a client assertion is valid: long enough for one token request.
const assertionLifetime = 10 * time.Minute

// Assertion returns a fresh client assertion for clientID at the token endpoint audience (RFC 7523
// §3: iss and sub are the client, aud the token endpoint, a unique jti, a short exp).
func (c *ClientCertificate) Assertion(clientID, audience string, now time.Time) (string, error) {
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return "", err
	}
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "x5t#S256": c.Thumbprint()})
	claims, _ := json.Marshal(map[string]any{
		"aud": audience, "iss": clientID, "sub": clientID, "jti": base64.RawURLEncoding.EncodeToString(jti),
		"nbf": now.Unix(), "iat": now.Unix(), "exp": now.Add(assertionLifetime).Unix(),
	})
	signing := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(claims)
	sum := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, c.key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// String names the certificate; the key never prints.
func (c *ClientCertificate) String() string {
	return "ClientCertificate{subject: " + c.Cert.Subject.String() + ", x5t#S256: " + c.Thumbprint() + "}"
}

// Format keeps the key out of every fmt verb.
func (c *ClientCertificate) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(c.String())) }

// ClientAssertionType is the client_assertion_type of a JWT client assertion (RFC 7523 §2.2).
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// assertingTransport adds a fresh client assertion to every token request (client credentials,
// authorization code redemption, refresh) and drops any client_secret, so each flow of x/oauth2 — which
// only knows secrets — authenticates with the certificate.
type assertingTransport struct {
	base     http.RoundTripper
	tokenURL string
	clientID string
	cert     *ClientCertificate
	now      func() time.Time
}

func (a *assertingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodPost || !sameEndpoint(req.URL, a.tokenURL) || req.Body == nil {
		return a.base.RoundTrip(req)
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	req.Body.Close()
	if err != nil {
		return nil, err
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, err
	}
	assertion, err := a.cert.Assertion(a.clientID, a.tokenURL, a.now())
	if err != nil {
		return nil, fmt.Errorf("client assertion: %w", err)
	}
	form.Del("client_secret")
	form.Set("client_id", a.clientID)
	form.Set("client_assertion_type", ClientAssertionType)
	form.Set("client_assertion", assertion)
	enc := form.Encode()
	r2 := req.Clone(req.Context())
	r2.Body = io.NopCloser(bytes.NewReader([]byte(enc)))
	r2.ContentLength = int64(len(enc))
	r2.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(enc)), nil }
	r2.Header.Del("Authorization") // never client_secret_basic beside an assertion
	return a.base.RoundTrip(r2)
}

func sameEndpoint(u *url.URL, tokenURL string) bool {
	t, err := url.Parse(tokenURL)
	return err == nil && strings.EqualFold(u.Host, t.Host) && u.Path == t.Path && u.Scheme == t.Scheme
}
