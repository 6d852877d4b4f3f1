package main

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/deliver/ses/events"
	"github.com/mailgate/mailgate/relay/peertest"
)

// TestSESBounceSuppressesThroughTheBinary: the whole SES bounce path of a running mailgate. A signed
// SNS notification of a permanent bounce is posted to the events listener; mailgate fetches the
// signing certificate from https://sns.eu-west-1.amazonaws.com/… the way it does in production —
// through the standard HTTPS_PROXY, verified against the system roots (SSL_CERT_FILE points them at
// this test's CA) — verifies the signature, records the bounce and suppresses the address: the next
// submission to it is refused at RCPT. SNS's redelivery of the same notification changes nothing.
func TestSESBounceSuppressesThroughTheBinary(t *testing.T) {
	pki := newTestPKI(t, "sns.eu-west-1.amazonaws.com")
	const certPath = "/SimpleNotificationService-mailgate-test.pem"
	sns := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != certPath {
			http.NotFound(w, r)
			return
		}
		w.Write(pki.signingPEM)
	}))
	sns.TLS = &tls.Config{Certificates: []tls.Certificate{pki.server}}
	sns.StartTLS()
	defer sns.Close()
	proxy := connectProxy(t, sns.Listener.Addr().String())

	emu := peertest.SESEmulator(t)
	in := newInstance(t, sesConfig(emu.URL))
	in.extraEnv = append(append([]string{}, sesEnv...), "HTTPS_PROXY=http://"+proxy, "SSL_CERT_FILE="+pki.caFile)
	in.start()

	const gone = "gone@example.net"
	msg := fmt.Sprintf(`{"notificationType":"Bounce","bounce":{"feedbackId":"fb-e2e-1","bounceType":"Permanent","bounceSubType":"General",
"bouncedRecipients":[{"emailAddress":%q,"action":"failed","status":"5.1.1","diagnosticCode":"smtp; 550 5.1.1 <%s>: User unknown"}],
"timestamp":"2026-11-27T05:00:00.250Z"},"mail":{"messageId":"0102018f-e2e","destination":[%q],
"commonHeaders":{"messageId":"<ticket-777.x@example.com>"},"tags":{"mailgate-channel":["Support"]}}}`, gone, gone, gone)
	env := &events.Envelope{Type: events.TypeNotification, MessageID: "sns-e2e-1", TopicArn: "arn:aws:sns:eu-west-1:123456789012:mailgate-events",
		Message: msg, Timestamp: time.Now().UTC().Format(time.RFC3339), SignatureVersion: "2",
		SigningCertURL: "https://sns.eu-west-1.amazonaws.com" + certPath}
	text, err := env.StringToSign()
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte(text))
	sig, err := rsa.SignPKCS1v15(rand.Reader, pki.signingKey, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	env.Signature = base64.StdEncoding.EncodeToString(sig)
	body, _ := json.Marshal(env)
	post := func() int {
		req, _ := http.NewRequest(http.MethodPost, "http://"+in.events+"/ses/events", bytes.NewReader(body))
		req.Header.Set("X-Amz-Sns-Message-Type", events.TypeNotification)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Logf("events listener: %d %s\n%s", resp.StatusCode, b, in.logs())
		}
		return resp.StatusCode
	}
	if code := post(); code != http.StatusOK {
		t.Fatalf("signed bounce notification answered %d", code)
	}
	out, code := in.swaks("--to", gone, "--h-From", "support@example.com")
	if code == 0 || !strings.Contains(out, "550 5.1.1") {
		t.Fatalf("submission to the bounced address: exit %d, want 550 5.1.1 at RCPT\n%s", code, out)
	}
	if code := post(); code != http.StatusOK {
		t.Fatalf("SNS's redelivery answered %d", code)
	}
	out, _ = in.mailgate("bounces", "list", "--config", in.config, "--json")
	var records []map[string]any
	if err := json.Unmarshal([]byte(out), &records); err != nil || len(records) != 1 {
		t.Fatalf("bounces list --json (want the one record): %v\n%s", err, out)
	}
	if r := records[0]; r["address"] != gone || r["fault"] != "address" || r["suppressed"] != true ||
		r["reason"] != "ses_bounce" || r["enhanced_code"] != "5.1.1" {
		t.Fatalf("bounce record %v", r)
	}
}

// testPKI is a CA, a TLS server certificate it issued for one host, and a self-signed SNS signing key.
type testPKI struct {
	caFile     string
	server     tls.Certificate
	signingKey *rsa.PrivateKey
	signingPEM []byte
}

func newTestPKI(t *testing.T, host string) *testPKI {
	t.Helper()
	key := func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mailgate test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey := key()
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: big.NewInt(2),
		Subject: pkix.Name{CommonName: host}, DNSNames: []string{host}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	sigKey := key()
	sigTmpl := &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: host},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	sigDER, err := x509.CreateCertificate(rand.Reader, sigTmpl, sigTmpl, &sigKey.PublicKey, sigKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &testPKI{
		caFile:     caFile,
		server:     tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey},
		signingKey: sigKey,
		signingPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: sigDER}),
	}
}

// connectProxy is an HTTP CONNECT proxy on loopback that tunnels every CONNECT to target, whatever
// host it names: mailgate's HTTPS request for the SNS host reaches this test's server, and TLS
// verification (of the name) happens end to end as it would on the internet.
func connectProxy(t *testing.T, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second))
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil || req.Method != http.MethodConnect {
					io.WriteString(c, "HTTP/1.1 405 CONNECT only\r\n\r\n")
					return
				}
				up, err := net.Dial("tcp", target)
				if err != nil {
					io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
					return
				}
				defer up.Close()
				io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
				done := make(chan struct{}, 2)
				go func() { io.Copy(up, br); done <- struct{}{} }()
				go func() { io.Copy(c, up); done <- struct{}{} }()
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}
