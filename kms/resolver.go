package kms

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	awskms "github.com/aws/aws-sdk-go-v2/service/kms"
)

// Resolver turns secret references into Secrets, and seals values mailgate stores itself. The zero
// value resolves env:, file: and (with Development) plain values; KMS and Keyring are needed for
// kms: and local: references. The lead calls Resolve for every secret field at configuration load and
// reload, so decryption (and any KMS outage) happens once, up front, not per message.
type Resolver struct {
	// KMS decrypts kms: references and, with KMSKeyID, seals new values. nil = kms: refused.
	KMS KMSClient
	// KMSKeyID is the key (id, ARN or "alias/...") Seal encrypts with. Empty = Seal uses Keyring.
	KMSKeyID string
	// Keyring opens local: references and seals when KMSKeyID is empty. nil = local: refused.
	Keyring *Keyring
	// Development allows plain-text values (a configuration marked development). Never in production.
	Development bool
	// LookupEnv reads env: references; nil = os.LookupEnv.
	LookupEnv func(name string) (string, bool)
	// ReadFile reads file: references; nil = ReadSecretFile (mode 0600/0400, at most 64 KiB).
	ReadFile func(path string) ([]byte, error)
}

// MaxSecretBytes is the largest secret accepted: AWS KMS Encrypt takes at most 4096 bytes, and the
// same bound keeps the two sealed kinds interchangeable.
const MaxSecretBytes = 4096

// Resolve returns the value a reference points to. Errors name the secret (its sealed name, the
// variable or the path) and the reference kind, never the value nor the ciphertext.
func (r *Resolver) Resolve(ctx context.Context, ref string) (Secret, error) {
	kind, body := ParseReference(ref)
	switch kind {
	case KindKMS, KindLocal:
		return r.Open(ctx, ref)
	case KindEnv:
		if body == "" {
			return Secret{}, errors.New("kms: env: reference names no variable")
		}
		lookup := r.LookupEnv
		if lookup == nil {
			lookup = os.LookupEnv
		}
		v, ok := lookup(body)
		if !ok {
			return Secret{}, fmt.Errorf("kms: secret env:%s: environment variable %s is not set", body, body)
		}
		return NewSecret(v), nil
	case KindFile:
		if body == "" {
			return Secret{}, errors.New("kms: file: reference names no file")
		}
		read := r.ReadFile
		if read == nil {
			read = ReadSecretFile
		}
		b, err := read(body)
		if err != nil {
			// *fs.PathError carries the path and the OS error only.
			return Secret{}, fmt.Errorf("kms: secret file:%s: %w", body, err)
		}
		return NewSecret(trimNewline(string(b))), nil
	default:
		if !r.Development {
			return Secret{}, errors.New("kms: plain-text secret refused: this configuration is not marked " +
				"development, so a secret must be a reference: kms:<base64> (AWS KMS), local:<base64> " +
				"(local keyring), env:NAME or file:PATH; `mailgate secret encrypt` makes kms: and local: ones")
		}
		return NewSecret(ref), nil
	}
}

// Open decrypts a sealed reference (kms: or local:), as made by Seal or Encrypt. Other kinds are
// refused: a value read back from the store must have been sealed.
func (r *Resolver) Open(ctx context.Context, ref string) (Secret, error) {
	kind, body := ParseReference(ref)
	b, err := decodeBase64(body)
	switch kind {
	case KindKMS:
		if err != nil {
			return Secret{}, fmt.Errorf("kms: malformed kms: reference: %w", err)
		}
		env, err := decodeKMSEnvelope(b)
		if err != nil {
			return Secret{}, fmt.Errorf("kms: malformed kms: reference: %w", err)
		}
		if r.KMS == nil {
			return Secret{}, fmt.Errorf("kms: cannot decrypt secret %s: no AWS KMS client configured", displayName(env.name))
		}
		out, err := r.KMS.Decrypt(ctx, &awskms.DecryptInput{
			CiphertextBlob:    env.blob,
			EncryptionContext: encryptionContext(env.name),
		})
		if err != nil {
			return Secret{}, fmt.Errorf("kms: cannot decrypt secret %s: %w", displayName(env.name), describeKMSError(r.KMS, err))
		}
		s := NewSecret(string(out.Plaintext))
		clear(out.Plaintext)
		return s, nil
	case KindLocal:
		if err != nil {
			return Secret{}, fmt.Errorf("kms: malformed local: reference: %w", err)
		}
		env, err := decodeLocalEnvelope(b)
		if err != nil {
			return Secret{}, fmt.Errorf("kms: malformed local: reference: %w", err)
		}
		if r.Keyring == nil {
			return Secret{}, fmt.Errorf("kms: cannot decrypt secret %s: no local keyring configured", displayName(env.name))
		}
		pt, err := r.Keyring.open(env)
		if err != nil {
			return Secret{}, fmt.Errorf("kms: cannot decrypt secret %s: %w", displayName(env.name), err)
		}
		s := NewSecret(string(pt))
		clear(pt)
		return s, nil
	default:
		return Secret{}, fmt.Errorf("kms: want a sealed kms: or local: reference, got a %s reference", kind)
	}
}

// Seal encrypts plaintext under the name (which becomes part of the KMS encryption context, or of
// the keyring's authenticated data) and returns the reference to store: kms: when KMSKeyID is set,
// local: otherwise.
func (r *Resolver) Seal(ctx context.Context, name, plaintext string) (ref string, err error) {
	if err := validName(name); err != nil {
		return "", fmt.Errorf("kms: %w", err)
	}
	if len(plaintext) > MaxSecretBytes {
		return "", fmt.Errorf("kms: secret %s is longer than %d bytes", displayName(name), MaxSecretBytes)
	}
	switch {
	case r.KMSKeyID != "":
		if r.KMS == nil {
			return "", fmt.Errorf("kms: cannot encrypt secret %s: no AWS KMS client configured", displayName(name))
		}
		out, err := r.KMS.Encrypt(ctx, &awskms.EncryptInput{
			KeyId:             &r.KMSKeyID,
			Plaintext:         []byte(plaintext),
			EncryptionContext: encryptionContext(name),
		})
		if err != nil {
			return "", fmt.Errorf("kms: cannot encrypt secret %s with %s: %w", displayName(name), r.KMSKeyID, describeKMSError(r.KMS, err))
		}
		return encodeKMSEnvelope(name, out.CiphertextBlob), nil
	case r.Keyring != nil:
		ref, err := r.Keyring.seal(name, []byte(plaintext))
		if err != nil {
			return "", fmt.Errorf("kms: cannot encrypt secret %s: %w", displayName(name), err)
		}
		return ref, nil
	default:
		return "", errors.New("kms: nothing to seal with: configure a KMS key id or a local keyring")
	}
}

// EncryptOptions are the choices of `mailgate secret encrypt`: exactly one of KMSKeyID and Keyring.
type EncryptOptions struct {
	KMSKeyID string     // --kms alias/X
	Keyring  string     // --local KEYRING (path)
	Name     string     // --name N: bound into the ciphertext, shown in errors
	AWS      AWSOptions // how to reach KMS when KMS is nil
	KMS      KMSClient  // an already built client; nil = NewAWSClient(AWS)
}

// Encrypt reads one secret from in (stdin: secrets never travel in argv, where ps and shell history
// see them), drops one trailing newline, and returns the reference to paste into the configuration.
func Encrypt(ctx context.Context, in io.Reader, o EncryptOptions) (ref string, err error) {
	if (o.KMSKeyID == "") == (o.Keyring == "") {
		return "", errors.New("kms: choose exactly one of a KMS key (--kms alias/NAME) and a local keyring (--local PATH)")
	}
	b, err := io.ReadAll(io.LimitReader(in, MaxSecretBytes+3))
	if err != nil {
		return "", fmt.Errorf("kms: reading the secret: %w", err)
	}
	value := trimNewline(string(b))
	clear(b)
	if value == "" {
		return "", errors.New("kms: the secret read from standard input is empty")
	}
	if len(value) > MaxSecretBytes {
		return "", fmt.Errorf("kms: the secret is longer than %d bytes", MaxSecretBytes)
	}
	r := &Resolver{KMSKeyID: o.KMSKeyID, KMS: o.KMS}
	if o.KMSKeyID != "" && r.KMS == nil {
		if r.KMS, err = NewAWSClient(ctx, o.AWS); err != nil {
			return "", err
		}
	}
	if o.Keyring != "" {
		if r.Keyring, err = LoadKeyring(o.Keyring); err != nil {
			return "", err
		}
	}
	return r.Seal(ctx, o.Name, value)
}

// trimNewline removes one trailing "\n" or "\r\n": what echo, heredocs and editors append.
func trimNewline(s string) string {
	if s, ok := strings.CutSuffix(s, "\n"); ok {
		return strings.TrimSuffix(s, "\r")
	}
	return s
}

func displayName(name string) string {
	if name == "" {
		return "(unnamed)"
	}
	return fmt.Sprintf("%q", name)
}
