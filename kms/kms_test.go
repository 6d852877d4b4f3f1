package kms

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// awsTestEnv gives the SDK static credentials and no shared files, so the default chain never
// reaches for the machine's profile or instance metadata.
func awsTestEnv(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAMAILGATETEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "mailgate-test-not-a-secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

func localKMSResolver(t *testing.T, keyID string) *Resolver {
	t.Helper()
	awsTestEnv(t)
	k := peertest.LocalKMS(t)
	c, err := NewAWSClient(context.Background(), AWSOptions{Region: "eu-west-2", Endpoint: k.URL})
	if err != nil {
		t.Fatal(err)
	}
	return &Resolver{KMS: c, KMSKeyID: keyID}
}

// assertClean fails when text holds any of the secrets (or their base64 forms).
func assertClean(t *testing.T, what, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if strings.Contains(text, s) || strings.Contains(text, base64.StdEncoding.EncodeToString([]byte(s))) {
			t.Errorf("%s leaks a secret: %s", what, text)
		}
	}
}

func TestKMSRoundTripWithLocalKMS(t *testing.T) {
	ctx := context.Background()
	for _, alias := range []string{"alias/mailgate-secrets", "alias/mailgate-rotated"} {
		t.Run(alias, func(t *testing.T) {
			r := localKMSResolver(t, alias)
			const value = "hunter2-client-secret-ÄÖ"
			for _, name := range []string{"servers.m365.client_secret", ""} {
				ref, err := r.Seal(ctx, name, value)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(ref, "kms:") || strings.Contains(ref, value) {
					t.Fatalf("ref %q", ref)
				}
				if got, _ := SealedName(ref); got != name {
					t.Fatalf("SealedName = %q, want %q", got, name)
				}
				// Decrypt needs no key id: a resolver without KMSKeyID opens it.
				dec := &Resolver{KMS: r.KMS}
				s, err := dec.Resolve(ctx, ref)
				if err != nil {
					t.Fatal(err)
				}
				if s.Reveal() != value {
					t.Fatalf("round trip gave a different value")
				}
			}
		})
	}
}

func TestKMSWrongEncryptionContextRefused(t *testing.T) {
	ctx := context.Background()
	r := localKMSResolver(t, "alias/mailgate-secrets")
	const value = "smtp-password-42"
	ref, err := r.Seal(ctx, "servers.a.password", value)
	if err != nil {
		t.Fatal(err)
	}
	blob, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(ref, "kms:"))
	env, err := decodeKMSEnvelope(blob)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"servers.b.password", "", "servers.a.passwore"} {
		tampered := encodeKMSEnvelope(name, env.blob)
		_, err = r.Resolve(ctx, tampered)
		if err == nil {
			t.Fatalf("a ciphertext moved to name %q decrypted", name)
		}
		t.Logf("operator sees: %v", err)
		if !strings.Contains(err.Error(), "KMS refused the ciphertext") {
			t.Errorf("error does not explain the refusal: %v", err)
		}
		assertClean(t, "error", err.Error(), value, base64.StdEncoding.EncodeToString(env.blob), strings.TrimPrefix(tampered, "kms:"))
	}
}

func TestKMSUnreachableIsAClearError(t *testing.T) {
	ctx := context.Background()
	r := localKMSResolver(t, "alias/mailgate-secrets")
	const value = "will-not-be-shown"
	ref, err := r.Seal(ctx, "servers.m365.client_secret", value)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://127.0.0.1:" + strconv.Itoa(peertest.FreePort(t)) // nothing listens there
	c, err := NewAWSClient(ctx, AWSOptions{Region: "eu-west-2", Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = (&Resolver{KMS: c}).Resolve(ctx, ref)
	if err == nil {
		t.Fatal("decrypt against a closed port succeeded")
	}
	want := `kms: cannot decrypt secret "servers.m365.client_secret": KMS endpoint ` + endpoint + ` unreachable: `
	if !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error = %v\nwant prefix %s", err, want)
	}
	assertClean(t, "error", err.Error(), value, strings.TrimPrefix(ref, "kms:"))
	t.Logf("operator sees: %v", err)
}

func TestLocalKeyringRotation(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keyring.json")
	first, err := Keygen(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring mode %04o, want 0600", fi.Mode().Perm())
	}
	kr, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	old, err := (&Resolver{Keyring: kr}).Seal(ctx, "servers.a.password", "old-value")
	if err != nil {
		t.Fatal(err)
	}
	second, err := Keygen(path)
	if err != nil {
		t.Fatal(err)
	}
	if second == first {
		t.Fatal("keygen reused a key id")
	}
	kr, err = LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	if ids := kr.KeyIDs(); len(ids) != 2 || ids[0] != first || ids[1] != second || kr.NewestKeyID() != second {
		t.Fatalf("key ids %v, newest %s", ids, kr.NewestKeyID())
	}
	r := &Resolver{Keyring: kr}
	s, err := r.Resolve(ctx, old)
	if err != nil {
		t.Fatalf("an old reference no longer decrypts after keygen: %v", err)
	}
	if s.Reveal() != "old-value" {
		t.Fatal("wrong value")
	}
	fresh, err := r.Seal(ctx, "servers.a.password", "new-value")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(fresh, "local:"))
	env, err := decodeLocalEnvelope(b)
	if err != nil || env.keyID != second {
		t.Fatalf("new secret sealed with %q (err %v), want the newest key %q", env.keyID, err, second)
	}
	if s, err := r.Open(ctx, fresh); err != nil || s.Reveal() != "new-value" {
		t.Fatalf("fresh ref: %v", err)
	}
	// A keyring without the old key cannot open the old reference, and says which key is missing.
	other := filepath.Join(t.TempDir(), "other.json")
	if _, err := Keygen(other); err != nil {
		t.Fatal(err)
	}
	okr, _ := LoadKeyring(other)
	_, err = (&Resolver{Keyring: okr}).Resolve(ctx, old)
	if err == nil || !strings.Contains(err.Error(), first) {
		t.Fatalf("want a missing-key error naming %s, got %v", first, err)
	}
}

func TestLocalTamperedReferenceRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keyring.json")
	if _, err := Keygen(path); err != nil {
		t.Fatal(err)
	}
	kr, _ := LoadKeyring(path)
	r := &Resolver{Keyring: kr}
	ref, err := r.Seal(ctx, "servers.a.password", "s3cr3t-value")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(ref, "local:"))
	env, _ := decodeLocalEnvelope(b)
	// Rename the secret in the envelope: the name is authenticated data, so decryption fails.
	renamed := append(localHeader(env.keyID, "servers.b.password"), env.nonce...)
	renamed = append(renamed, env.ciphertext...)
	flipped := bytes.Clone(b)
	flipped[len(flipped)-1] ^= 1
	for _, bad := range [][]byte{renamed, flipped} {
		badRef := "local:" + base64.StdEncoding.EncodeToString(bad)
		_, err := r.Resolve(ctx, badRef)
		if err == nil || !strings.Contains(err.Error(), "authentication failed") {
			t.Fatalf("tampered reference: %v", err)
		}
		assertClean(t, "error", err.Error(), "s3cr3t-value", strings.TrimPrefix(badRef, "local:"))
	}
}

func TestKeyringReadableByOthersRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keyring.json")
	if _, err := Keygen(path); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o640, 0o604, 0o644} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadKeyring(path)
		if err == nil || !strings.Contains(err.Error(), "readable by group or others") || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("mode %04o: %v", mode, err)
		}
		if _, err := Keygen(path); err == nil {
			t.Fatalf("keygen extended a keyring with mode %04o", mode)
		}
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	kr, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x"} {
		out := fmt.Sprintf(verb, kr)
		if !strings.Contains(out, "keys: 1") {
			t.Errorf("%s of a keyring = %q", verb, out)
		}
		raw := base64.StdEncoding.EncodeToString(kr.keys[0].raw)
		if strings.Contains(out, raw) || strings.Contains(out, fmt.Sprintf("%x", kr.keys[0].raw)) {
			t.Errorf("%s of a keyring shows key material", verb)
		}
	}
}

func TestResolveEnvFilePlain(t *testing.T) {
	ctx := context.Background()
	env := map[string]string{"SMTP_PASS": "from-env"}
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	r := &Resolver{LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok }}
	cases := []struct{ ref, want string }{
		{"env:SMTP_PASS", "from-env"},
		{"file:" + write("a", "line\n"), "line"},
		{"file:" + write("b", "line\n\n"), "line\n"},
		{"file:" + write("c", "crlf\r\n"), "crlf"},
		{"file:" + write("d", "none"), "none"},
	}
	for _, c := range cases {
		s, err := r.Resolve(ctx, c.ref)
		if err != nil {
			t.Fatalf("%s: %v", c.ref, err)
		}
		if s.Reveal() != c.want {
			t.Errorf("%s = %q, want %q", c.ref, s.Reveal(), c.want)
		}
	}
	if _, err := r.Resolve(ctx, "env:MISSING"); err == nil || !strings.Contains(err.Error(), "MISSING is not set") {
		t.Errorf("missing env: %v", err)
	}
	if _, err := r.Resolve(ctx, "file:"+filepath.Join(dir, "nope")); err == nil {
		t.Error("missing file resolved")
	}
	const plain = "plain-text-password"
	_, err := r.Resolve(ctx, plain)
	if err == nil || !strings.Contains(err.Error(), "not marked development") || !strings.Contains(err.Error(), "kms:<base64>") {
		t.Fatalf("plain value outside development: %v", err)
	}
	assertClean(t, "error", err.Error(), plain)
	dev := &Resolver{Development: true}
	if s, err := dev.Resolve(ctx, plain); err != nil || s.Reveal() != plain {
		t.Fatalf("development plain value: %v", err)
	}
	for _, ref := range []string{"kms:@@@", "local:@@@", "kms:", "local:AQ==", "kms:AQAA"} {
		if _, err := dev.Resolve(ctx, ref); err == nil {
			t.Errorf("%q resolved", ref)
		}
	}
	if _, err := dev.Open(ctx, "env:SMTP_PASS"); err == nil {
		t.Error("Open accepted an env: reference")
	}
}

func TestEncryptFromReader(t *testing.T) {
	ctx := context.Background()
	r := localKMSResolver(t, "")
	path := filepath.Join(t.TempDir(), "keyring.json")
	if _, err := Keygen(path); err != nil {
		t.Fatal(err)
	}
	kr, _ := LoadKeyring(path)
	dec := &Resolver{KMS: r.KMS, Keyring: kr}
	for _, o := range []EncryptOptions{
		{KMSKeyID: "alias/mailgate-secrets", Name: "servers.m365.client_secret", KMS: r.KMS},
		{Keyring: path, Name: "servers.relay.password"},
		{Keyring: path},
	} {
		ref, err := Encrypt(ctx, strings.NewReader("typed-secret\n"), o)
		if err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
		s, err := dec.Resolve(ctx, ref)
		if err != nil || s.Reveal() != "typed-secret" {
			t.Fatalf("%+v: resolve: %v", o, err)
		}
		if n, _ := SealedName(ref); n != o.Name {
			t.Errorf("name %q, want %q", n, o.Name)
		}
	}
	for _, bad := range []struct {
		in string
		o  EncryptOptions
	}{
		{"x", EncryptOptions{}},
		{"x", EncryptOptions{KMSKeyID: "alias/mailgate-secrets", Keyring: path}},
		{"\n", EncryptOptions{Keyring: path}},
		{strings.Repeat("x", MaxSecretBytes+1), EncryptOptions{Keyring: path}},
	} {
		if _, err := Encrypt(ctx, strings.NewReader(bad.in), bad.o); err == nil {
			t.Errorf("Encrypt(%d bytes, %+v) succeeded", len(bad.in), bad.o)
		}
	}
}

type holder struct {
	Name     string
	Password Secret
	Ptr      *Secret
}

func TestSecretNeverPrints(t *testing.T) {
	const value = "p@ssw0rd-VALUE"
	s := NewSecret(value)
	h := holder{Name: "relay", Password: s, Ptr: &s}
	var outputs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10.3s"} {
		outputs = append(outputs, fmt.Sprintf(verb, s), fmt.Sprintf(verb, &s), fmt.Sprintf(verb, h), fmt.Sprintf(verb, &h))
	}
	outputs = append(outputs, fmt.Sprint(s), fmt.Sprintln(s, h), s.String(), s.GoString(),
		fmt.Errorf("wrapped: %v", s).Error())
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	log.Info("resolved", "secret", s, "ptr", &s, "holder", h, slog.Any("any", s), slog.Group("g", "s", s))
	slog.New(slog.NewTextHandler(&logs, nil)).Info("resolved", "secret", s, "holder", h)
	outputs = append(outputs, logs.String())
	j, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, string(j))
	mj, err := json.Marshal(map[Secret]Secret{s: s})
	if err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, string(mj))
	for _, out := range outputs {
		assertClean(t, "output", out, value, fmt.Sprintf("%x", value))
		if !strings.Contains(out, redacted) {
			t.Errorf("output without the redaction marker: %q", out)
		}
	}
	if s.Reveal() != value || s.IsZero() || !(Secret{}).IsZero() {
		t.Fatal("Reveal/IsZero")
	}
}

func TestSealedNameErrors(t *testing.T) {
	if _, err := SealedName("env:X"); err == nil {
		t.Error("env: has no sealed name")
	}
	if _, err := SealedName("kms:AA=="); err == nil {
		t.Error("short kms: blob accepted")
	}
	if !errors.Is(errMalformed, errMalformed) {
		t.Fatal()
	}
}
