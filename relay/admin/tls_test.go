package admin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestEventsTLS: with a certificate the events listener speaks only TLS.
func TestEventsTLS(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "events.test"},
		DNSNames: []string{"events.test"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	e := NewEvents("/ses/events", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }), Limits{})
	if err := e.Listen("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}); err != nil {
		t.Fatal(err)
	}
	addr := serveListening(t, &e.listener)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := c.Post("https://"+addr+"/ses/events", "text/plain", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("TLS POST: %d", resp.StatusCode)
	}
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Post("http://"+addr+"/ses/events", "text/plain", nil); err == nil {
		if resp.StatusCode == 200 {
			t.Error("plain HTTP served on a TLS events listener")
		}
		resp.Body.Close()
	}
}

// FuzzHostAllowed: whatever the Host header, it passes only as localhost, an IP literal or the
// allowed name (with an optional port and trailing dot).
func FuzzHostAllowed(f *testing.F) {
	for _, h := range []string{"localhost:9465", "127.0.0.1", "[::1]:9465", "mailgate-1.internal", "evil.example:9465", "", "[", "localhost.:1", "MAILGATE-1.INTERNAL."} {
		f.Add(h)
	}
	s := New(Options{Gatherer: prometheus.NewRegistry(), AllowedHosts: []string{"mailgate-1.internal"}})
	f.Fuzz(func(t *testing.T, h string) {
		if !s.hostAllowed(h) {
			return
		}
		host := h
		if hh, _, err := net.SplitHostPort(h); err == nil {
			host = hh
		}
		host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
		if host != "localhost" && host != "mailgate-1.internal" && net.ParseIP(strings.SplitN(host, "%", 2)[0]) == nil {
			t.Fatalf("accepted Host %q", h)
		}
	})
}
