package peertest

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"testing"
	"time"
)

// ClientCertificate is an app registration's certificate credential for tests: a self-signed RSA
// certificate (PEM) and its PKCS #8 private key (PEM), valid until NotAfter.
type ClientCertificate struct {
	CertPEM, KeyPEM []byte
	Key             *rsa.PrivateKey
	NotAfter        time.Time
}

// NewClientCertificate makes a 2048-bit RSA key and a certificate for it valid for validFor.
func NewClientCertificate(t testing.TB, validFor time.Duration) ClientCertificate {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	notAfter := time.Now().Add(validFor).Truncate(time.Second)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "mailgate test app"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return ClientCertificate{CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), Key: key, NotAfter: notAfter}
}
