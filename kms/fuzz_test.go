package kms

import (
	"context"
	"encoding/base64"
	"path/filepath"
	"strings"
	"testing"
)

func FuzzParseReference(f *testing.F) {
	for _, s := range []string{"kms:AQAB", "local:", "env:X", "file:/etc/x", "plain", "", "KMS:x", "kms", "envx:y", "file::"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		kind, body := ParseReference(ref)
		switch kind {
		case KindPlain:
			if body != ref {
				t.Fatalf("plain body %q != ref %q", body, ref)
			}
			for _, k := range []Kind{KindKMS, KindLocal, KindEnv, KindFile} {
				if strings.HasPrefix(ref, string(k)+":") {
					t.Fatalf("%q has prefix %s but parsed as plain", ref, k)
				}
			}
		default:
			if string(kind)+":"+body != ref {
				t.Fatalf("kind %s body %q do not rebuild %q", kind, body, ref)
			}
		}
		// Resolving never panics, and never accepts a plain value outside development.
		r := &Resolver{LookupEnv: func(string) (string, bool) { return "", false }, ReadFile: func(string) ([]byte, error) { return nil, errMalformed }}
		if _, err := r.Resolve(context.Background(), ref); err == nil && kind == KindPlain {
			t.Fatalf("plain %q accepted outside development", ref)
		}
	})
}

// FuzzLocalEnvelope feeds arbitrary bytes to the local blob decoder and the keyring: no panic, and
// nothing opens unless it was sealed by the keyring.
func FuzzLocalEnvelope(f *testing.F) {
	path := filepath.Join(f.TempDir(), "keyring.json")
	if _, err := Keygen(path); err != nil {
		f.Fatal(err)
	}
	kr, err := LoadKeyring(path)
	if err != nil {
		f.Fatal(err)
	}
	r := &Resolver{Keyring: kr}
	ref, err := r.Seal(context.Background(), "seed", "value")
	if err != nil {
		f.Fatal(err)
	}
	sealed, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(ref, "local:"))
	f.Add(sealed)
	f.Add([]byte{1, 1, 'a', 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := decodeLocalEnvelope(b)
		if err == nil {
			if got := localHeader(env.keyID, env.name); string(got) != string(env.header) {
				t.Fatalf("header %x does not re-encode (%x)", env.header, got)
			}
			if len(env.nonce) != gcmNonceLen || len(env.ciphertext) < gcmTagLen {
				t.Fatal("short nonce or ciphertext accepted")
			}
		}
		s, err := r.Open(context.Background(), "local:"+base64.StdEncoding.EncodeToString(b))
		if err == nil && string(b) != string(sealed) {
			t.Fatalf("forged envelope opened to %d bytes", len(s.Reveal()))
		}
	})
}

func FuzzKMSEnvelope(f *testing.F) {
	f.Add([]byte(nil))
	f.Add([]byte{1, 0, 0, 9})
	f.Add([]byte{1, 0, 4, 'n', 'a', 'm', 'e', 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := decodeKMSEnvelope(b)
		if err != nil {
			return
		}
		again := encodeKMSEnvelope(env.name, env.blob)
		if again != "kms:"+base64.StdEncoding.EncodeToString(b) {
			t.Fatalf("envelope %x does not re-encode", b)
		}
		if n, err := SealedName(again); err != nil || n != env.name {
			t.Fatalf("SealedName = %q, %v", n, err)
		}
	})
}
