package events

import (
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha1"
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
	"sync"
	"time"
)

// SNS message types (the "Type" field; SNS also sends it as the x-amz-sns-message-type header).
const (
	TypeNotification             = "Notification"
	TypeSubscriptionConfirmation = "SubscriptionConfirmation"
	TypeUnsubscribeConfirmation  = "UnsubscribeConfirmation"
)

// Envelope is an SNS HTTP(S) message as POSTed to a subscribed endpoint. Fields that SNS may omit are
// pointers, because the string to sign includes a field only when it is present.
type Envelope struct {
	Type             string
	MessageID        string  `json:"MessageId"`
	Token            *string `json:"Token,omitempty"`
	TopicArn         string
	Subject          *string `json:"Subject,omitempty"`
	Message          string
	Timestamp        string
	SignatureVersion string
	Signature        string
	SigningCertURL   string
	SubscribeURL     *string `json:"SubscribeURL,omitempty"`
	UnsubscribeURL   string  `json:",omitempty"`
}

// ParseEnvelope decodes an SNS message and checks that the fields every type carries are present.
func ParseEnvelope(b []byte) (*Envelope, error) {
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("sns: not an SNS message: %w", err)
	}
	switch {
	case e.Type == "":
		return nil, errors.New("sns: message has no Type")
	case e.MessageID == "", e.TopicArn == "", e.Timestamp == "":
		return nil, errors.New("sns: message lacks MessageId, TopicArn or Timestamp")
	case e.Signature == "" || e.SigningCertURL == "" || e.SignatureVersion == "":
		return nil, errors.New("sns: message is not signed")
	}
	return &e, nil
}

// StringToSign builds the canonical text SNS signs: "Name\nvalue\n" for a fixed, alphabetical list of
// fields that depends on the message type, each included only when present (AWS SNS developer guide,
// "Verifying the signatures of Amazon SNS messages").
func (e *Envelope) StringToSign() (string, error) {
	type field struct {
		name  string
		value *string
	}
	var fields []field
	switch e.Type {
	case TypeNotification:
		fields = []field{{"Message", &e.Message}, {"MessageId", &e.MessageID}, {"Subject", e.Subject},
			{"Timestamp", &e.Timestamp}, {"TopicArn", &e.TopicArn}, {"Type", &e.Type}}
	case TypeSubscriptionConfirmation, TypeUnsubscribeConfirmation:
		fields = []field{{"Message", &e.Message}, {"MessageId", &e.MessageID}, {"SubscribeURL", e.SubscribeURL},
			{"Timestamp", &e.Timestamp}, {"Token", e.Token}, {"TopicArn", &e.TopicArn}, {"Type", &e.Type}}
	default:
		return "", fmt.Errorf("sns: unknown message type %q", e.Type)
	}
	var b strings.Builder
	for _, f := range fields {
		if f.value == nil {
			continue
		}
		b.WriteString(f.name)
		b.WriteByte('\n')
		b.WriteString(*f.value)
		b.WriteByte('\n')
	}
	return b.String(), nil
}

// CheckSNSURL accepts only an https URL on an SNS regional host — sns.<region>.amazonaws.com or
// sns.<region>.amazonaws.com.cn — with no port, user info, query or fragment. Both the signing
// certificate and a SubscribeURL must pass it: the signature proves nothing if the certificate could
// come from anywhere, and confirming a subscription must not make mailgate fetch arbitrary URLs.
func CheckSNSURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("sns: bad URL: %w", err)
	}
	if u.Scheme != "https" {
		return nil, fmt.Errorf("sns: URL scheme %q is not https", u.Scheme)
	}
	if u.User != nil || u.Port() != "" || u.Fragment != "" || u.Opaque != "" || !strings.HasPrefix(u.Path, "/") {
		return nil, errors.New("sns: URL has user info, a port, a fragment or no path")
	}
	if !isSNSHost(u.Host) {
		return nil, fmt.Errorf("sns: host %q is not an SNS endpoint", u.Host)
	}
	return u, nil
}

// isSNSHost matches sns.<region>.amazonaws.com(.cn) exactly; <region> is lowercase letters, digits and
// dashes ("eu-west-1", "us-gov-west-1", "cn-north-1") with no dots, so "sns.eu-west-1.amazonaws.com.evil.example"
// and "evil.sns.eu-west-1.amazonaws.com" fail.
func isSNSHost(host string) bool {
	rest, ok := strings.CutPrefix(host, "sns.")
	if !ok {
		return false
	}
	region, ok := strings.CutSuffix(rest, ".amazonaws.com")
	if !ok {
		region, ok = strings.CutSuffix(rest, ".amazonaws.com.cn")
	}
	if !ok || len(region) < 4 || !strings.Contains(region, "-") || region[0] == '-' || region[len(region)-1] == '-' {
		return false
	}
	for _, c := range []byte(region) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// checkCertURL adds to CheckSNSURL what a signing certificate URL looks like: a .pem file and no query.
func checkCertURL(raw string) (*url.URL, error) {
	u, err := CheckSNSURL(raw)
	if err != nil {
		return nil, err
	}
	if u.RawQuery != "" || !strings.HasSuffix(u.Path, ".pem") {
		return nil, errors.New("sns: signing certificate URL is not a .pem file")
	}
	return u, nil
}

// Fetcher GETs a URL on an SNS host: the signing certificate, and the SubscribeURL that confirms a
// subscription. Injected so tests never leave loopback.
type Fetcher interface {
	Fetch(ctx context.Context, url string) ([]byte, error)
}

// HTTPFetcher is the production Fetcher: a GET with a bounded body, answered 200.
type HTTPFetcher struct {
	Client   *http.Client // nil: a client with a 10 s timeout that follows no redirects
	MaxBytes int64        // 0: 64 KiB (a certificate, or a confirmation answer)
}

// Fetch GETs u. It does not follow redirects: an SNS URL that redirects elsewhere is not trusted.
func (f HTTPFetcher) Fetch(ctx context.Context, u string) ([]byte, error) {
	client := f.Client
	if client == nil {
		client = &http.Client{
			Timeout:       10 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	max := f.MaxBytes
	if max <= 0 {
		max = 64 << 10
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", u, resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("GET %s: answer larger than %d bytes", u, max)
	}
	return b, nil
}

// Verifier checks SNS message signatures. Signing certificates are fetched once per URL and cached
// until they expire (SNS rotates them rarely; a handful of URLs are ever seen). A failed fetch is cached
// too, for FailureTTL, so that a stream of messages naming an unreachable certificate costs one fetch,
// not one per message; concurrent messages naming the same URL share one fetch.
type Verifier struct {
	fetch Fetcher
	roots *x509.CertPool
	now   func() time.Time
	// FailureTTL is how long a failed certificate fetch is remembered (default DefaultFailureTTL).
	FailureTTL time.Duration

	mu    sync.Mutex
	certs map[string]*certEntry
}

// certEntry is one cached fetch: done is closed when cert or err is set; until bounds a failure.
type certEntry struct {
	done  chan struct{}
	cert  *x509.Certificate
	err   error
	until time.Time
}

// DefaultFailureTTL is how long a failed signing-certificate fetch is cached: long enough that a flood
// of messages naming it cannot make mailgate fetch in a loop, short enough that SNS's redelivery of a
// genuine message (it retries for minutes) succeeds once the host answers again.
const DefaultFailureTTL = time.Minute

// maxCachedCerts bounds the certificate cache; only URLs of messages from an allowed topic, on that
// topic's regional SNS host, are ever fetched, so it is reached only if AWS rotates certificates many
// times during one run.
const maxCachedCerts = 32

// NewVerifier builds a Verifier. roots, when set, must issue the signing certificate (tests use a test
// CA); when nil, trust rests on fetching the certificate over verified HTTPS from an SNS host, as AWS's
// own SNS message validators do.
func NewVerifier(fetch Fetcher, roots *x509.CertPool, now func() time.Time) *Verifier {
	if now == nil {
		now = time.Now
	}
	return &Verifier{fetch: fetch, roots: roots, now: now, FailureTTL: DefaultFailureTTL, certs: map[string]*certEntry{}}
}

// Verify checks e's signature: SignatureVersion 1 is RSA PKCS#1 v1.5 over SHA-1, version 2 over
// SHA-256, of StringToSign, with the key of the certificate at SigningCertURL. The certificate must be
// served by the SNS host of the topic's own region; everything that can be checked without a network
// request is checked before the certificate is fetched. Callers check the topic first: Verify never
// decides whether a topic is wanted.
func (v *Verifier) Verify(ctx context.Context, e *Envelope) error {
	var hash crypto.Hash
	switch e.SignatureVersion {
	case "1":
		hash = crypto.SHA1
	case "2":
		hash = crypto.SHA256
	default:
		return fmt.Errorf("sns: unsupported SignatureVersion %q", e.SignatureVersion)
	}
	u, err := checkCertURL(e.SigningCertURL)
	if err != nil {
		return err
	}
	if region, ok := topicRegion(e.TopicArn); !ok || snsRegion(u.Host) != region {
		return fmt.Errorf("sns: signing certificate host %q is not the SNS host of topic %q's region", u.Host, e.TopicArn)
	}
	text, err := e.StringToSign()
	if err != nil {
		return err
	}
	sig, err := base64.StdEncoding.DecodeString(e.Signature)
	if err != nil {
		return fmt.Errorf("sns: signature is not base64: %w", err)
	}
	cert, err := v.cert(ctx, e.SigningCertURL)
	if err != nil {
		return err
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return errors.New("sns: signing certificate has no RSA key")
	}
	var digest []byte
	if hash == crypto.SHA1 {
		d := sha1.Sum([]byte(text))
		digest = d[:]
	} else {
		d := sha256.Sum256([]byte(text))
		digest = d[:]
	}
	if err := rsa.VerifyPKCS1v15(pub, hash, digest, sig); err != nil {
		return errors.New("sns: signature does not match the message")
	}
	return nil
}

// topicRegion is the region of an SNS topic ARN, arn:<partition>:sns:<region>:<account>:<name>.
func topicRegion(arn string) (string, bool) {
	f := strings.Split(arn, ":")
	if len(f) != 6 || f[0] != "arn" || f[2] != "sns" || f[3] == "" {
		return "", false
	}
	return f[3], true
}

// snsRegion is the <region> of a host isSNSHost accepted.
func snsRegion(host string) string {
	rest := strings.TrimPrefix(host, "sns.")
	if r, ok := strings.CutSuffix(rest, ".amazonaws.com.cn"); ok {
		return r
	}
	return strings.TrimSuffix(rest, ".amazonaws.com")
}

// cert returns the signing certificate at u, from the cache or fetched, checked valid now. A failure is
// cached for FailureTTL; concurrent callers for one URL wait for the one fetch in flight.
func (v *Verifier) cert(ctx context.Context, u string) (*x509.Certificate, error) {
	now := v.now()
	v.mu.Lock()
	e, ok := v.certs[u]
	if ok {
		select {
		case <-e.done:
			if e.err == nil && now.After(e.cert.NotBefore) && now.Before(e.cert.NotAfter) ||
				e.err != nil && now.Before(e.until) {
				v.mu.Unlock()
				return e.cert, e.err
			}
			ok = false // expired certificate or failure: fetch again
		default: // a fetch is in flight
		}
	}
	if !ok {
		if len(v.certs) >= maxCachedCerts {
			v.evictLocked()
		}
		e = &certEntry{done: make(chan struct{})}
		v.certs[u] = e
		v.mu.Unlock()
		e.cert, e.err = v.fetchCert(ctx, u, now)
		if e.err != nil {
			e.until = v.now().Add(v.FailureTTL)
			if ctx.Err() != nil {
				// The request gave up, not the host: the next message fetches again.
				e.until = time.Time{}
			}
		}
		close(e.done)
		return e.cert, e.err
	}
	v.mu.Unlock()
	select {
	case <-e.done:
		return e.cert, e.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// evictLocked drops one finished entry to make room (v.mu held).
func (v *Verifier) evictLocked() {
	for k, e := range v.certs {
		select {
		case <-e.done:
			delete(v.certs, k)
			return
		default:
		}
	}
}

func (v *Verifier) fetchCert(ctx context.Context, u string, now time.Time) (*x509.Certificate, error) {
	b, err := v.fetch.Fetch(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("sns: fetch signing certificate: %w", err)
	}
	return v.parseCert(b, now)
}

// parseCert decodes the PEM (leaf first, any intermediates after), checks the leaf's validity period
// and, with roots, its chain.
func (v *Verifier) parseCert(b []byte, now time.Time) (*x509.Certificate, error) {
	var chain []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("sns: signing certificate: %w", err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, errors.New("sns: no certificate in the signing certificate file")
	}
	leaf := chain[0]
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("sns: signing certificate is not valid now (valid %s to %s)",
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if v.roots != nil {
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: v.roots, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if err != nil {
			return nil, fmt.Errorf("sns: signing certificate not trusted: %w", err)
		}
	}
	return leaf, nil
}
