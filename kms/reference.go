package kms

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Kind is the kind of a secret reference: the text before the first colon.
type Kind string

// The reference kinds. KindPlain is a value with none of the known prefixes.
const (
	KindKMS   Kind = "kms"
	KindLocal Kind = "local"
	KindEnv   Kind = "env"
	KindFile  Kind = "file"
	KindPlain Kind = "plain"
)

// ParseReference splits a reference into its kind and the text after the prefix. It never fails:
// a value without a known prefix is KindPlain (and body is the whole value), which the Resolver
// accepts only in a development configuration.
func ParseReference(ref string) (kind Kind, body string) {
	for _, k := range []Kind{KindKMS, KindLocal, KindEnv, KindFile} {
		if rest, ok := strings.CutPrefix(ref, string(k)+":"); ok {
			return k, rest
		}
	}
	return KindPlain, ref
}

// envelopeVersion is the first byte of both sealed envelopes, so the format can evolve.
const envelopeVersion = 1

// maxNameLen bounds a secret name (it is an encryption-context value and appears in errors).
const maxNameLen = 1024

// gcmNonceLen and gcmTagLen are AES-GCM's standard sizes.
const (
	gcmNonceLen = 12
	gcmTagLen   = 16
)

var errMalformed = errors.New("malformed envelope")

// validName accepts the names we are willing to put in an encryption context and an error message.
func validName(name string) error {
	if len(name) > maxNameLen {
		return fmt.Errorf("secret name longer than %d bytes", maxNameLen)
	}
	if !utf8.ValidString(name) || strings.ContainsAny(name, "\x00\r\n") {
		return errors.New("secret name must be UTF-8 without NUL or line breaks")
	}
	return nil
}

func decodeBase64(body string) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(body)
	if err != nil {
		// The decoder's error carries an offset only, but say nothing about the content anyway.
		return nil, errors.New("not valid base64")
	}
	return b, nil
}

// kmsEnvelope is the decoded body of a kms: reference.
type kmsEnvelope struct {
	name string
	blob []byte // the KMS CiphertextBlob
}

func encodeKMSEnvelope(name string, blob []byte) string {
	b := make([]byte, 0, 3+len(name)+len(blob))
	b = append(b, envelopeVersion)
	b = binary.BigEndian.AppendUint16(b, uint16(len(name)))
	b = append(b, name...)
	b = append(b, blob...)
	return string(KindKMS) + ":" + base64.StdEncoding.EncodeToString(b)
}

func decodeKMSEnvelope(b []byte) (kmsEnvelope, error) {
	if len(b) < 3 || b[0] != envelopeVersion {
		return kmsEnvelope{}, errMalformed
	}
	n := int(binary.BigEndian.Uint16(b[1:3]))
	if n > maxNameLen || len(b) < 3+n+1 {
		return kmsEnvelope{}, errMalformed
	}
	env := kmsEnvelope{name: string(b[3 : 3+n]), blob: b[3+n:]}
	if validName(env.name) != nil {
		return kmsEnvelope{}, errMalformed
	}
	return env, nil
}

// localEnvelope is the decoded body of a local: reference.
type localEnvelope struct {
	keyID      string
	name       string
	header     []byte // version, key id and name: GCM additional data
	nonce      []byte
	ciphertext []byte // with the tag
}

func localHeader(keyID, name string) []byte {
	b := make([]byte, 0, 4+len(keyID)+len(name))
	b = append(b, envelopeVersion, byte(len(keyID)))
	b = append(b, keyID...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(name)))
	return append(b, name...)
}

func decodeLocalEnvelope(b []byte) (localEnvelope, error) {
	if len(b) < 2 || b[0] != envelopeVersion {
		return localEnvelope{}, errMalformed
	}
	idLen := int(b[1])
	p := 2
	if idLen == 0 || len(b) < p+idLen+2 {
		return localEnvelope{}, errMalformed
	}
	keyID := string(b[p : p+idLen])
	p += idLen
	nameLen := int(binary.BigEndian.Uint16(b[p : p+2]))
	p += 2
	if nameLen > maxNameLen || len(b) < p+nameLen+gcmNonceLen+gcmTagLen {
		return localEnvelope{}, errMalformed
	}
	name := string(b[p : p+nameLen])
	p += nameLen
	if validName(name) != nil || validKeyID(keyID) != nil {
		return localEnvelope{}, errMalformed
	}
	return localEnvelope{
		keyID: keyID, name: name, header: b[:p],
		nonce: b[p : p+gcmNonceLen], ciphertext: b[p+gcmNonceLen:],
	}, nil
}

// validKeyID accepts keyring key ids: 1 to 64 characters of [A-Za-z0-9._-].
func validKeyID(id string) error {
	if id == "" || len(id) > 64 {
		return errors.New("key id must be 1 to 64 characters")
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return errors.New("key id may hold only letters, digits, '.', '_' and '-'")
		}
	}
	return nil
}

// SealedName returns the name carried by a kms: or local: reference without decrypting it, so a
// consumer can check that a stored value belongs where it was found (the name is authenticated by
// the decryption itself).
func SealedName(ref string) (string, error) {
	kind, body := ParseReference(ref)
	switch kind {
	case KindKMS, KindLocal:
	default:
		return "", fmt.Errorf("kms: want a kms: or local: reference, got a %s reference", kind)
	}
	b, err := decodeBase64(body)
	if err != nil {
		return "", fmt.Errorf("kms: malformed %s: reference: %w", kind, err)
	}
	if kind == KindKMS {
		env, err := decodeKMSEnvelope(b)
		if err != nil {
			return "", fmt.Errorf("kms: malformed kms: reference: %w", err)
		}
		return env.name, nil
	}
	env, err := decodeLocalEnvelope(b)
	if err != nil {
		return "", fmt.Errorf("kms: malformed local: reference: %w", err)
	}
	return env.name, nil
}
