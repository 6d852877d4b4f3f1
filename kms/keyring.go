package kms

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// Keyring is a set of AES-256-GCM keys read from a keyring file, for local: references. Keys are kept
// in file order, oldest first; the newest key seals new secrets and every key opens the secrets it
// sealed, so adding a key (Keygen) rotates without re-encrypting anything.
//
// The file is JSON, mode 0600:
//
//	{"version": 1, "keys": [{"id": "20261127T052255Z-3f9a1c2e", "created": "...", "key": "<base64 32 bytes>"}]}
//
// A Keyring never prints its key material (Format and String show the path and key count).
type Keyring struct {
	path string
	keys []keyringKey // oldest first
}

type keyringKey struct {
	id      string
	created time.Time
	raw     []byte
	aead    cipher.AEAD
}

type keyringFile struct {
	Version int              `json:"version"`
	Keys    []keyringFileKey `json:"keys"`
}

type keyringFileKey struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Key     string    `json:"key"`
}

const keyringVersion = 1

// maxKeyringBytes bounds what LoadKeyring reads: a keyring holds a few hundred bytes per key.
const maxKeyringBytes = 1 << 20

// LoadKeyring reads a keyring file. It refuses a file that its group or other users can read, since
// anyone who can read it can decrypt every local: secret.
func LoadKeyring(path string) (*Keyring, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("kms: keyring: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("kms: keyring: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("kms: keyring %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("kms: keyring %s has mode %04o and is readable by group or others; "+
			"run `chmod 600 %s` (and consider its keys exposed)", path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyringBytes+1))
	if err != nil {
		return nil, fmt.Errorf("kms: keyring %s: %w", path, err)
	}
	if len(data) > maxKeyringBytes {
		return nil, fmt.Errorf("kms: keyring %s is larger than %d bytes", path, maxKeyringBytes)
	}
	k, err := parseKeyring(data)
	if err != nil {
		return nil, fmt.Errorf("kms: keyring %s: %w", path, err)
	}
	k.path = path
	return k, nil
}

func parseKeyring(data []byte) (*Keyring, error) {
	var kf keyringFile
	if err := json.Unmarshal(data, &kf); err != nil {
		// json errors may quote file content (key material): keep only the kind of problem.
		return nil, errors.New("not a keyring file (invalid JSON)")
	}
	if kf.Version != keyringVersion {
		return nil, fmt.Errorf("unsupported keyring version %d", kf.Version)
	}
	if len(kf.Keys) == 0 {
		return nil, errors.New("keyring holds no keys")
	}
	k := &Keyring{}
	seen := map[string]bool{}
	for i, fk := range kf.Keys {
		if err := validKeyID(fk.ID); err != nil {
			return nil, fmt.Errorf("keys[%d]: %w", i, err)
		}
		if seen[fk.ID] {
			return nil, fmt.Errorf("keys[%d]: duplicate key id %q", i, fk.ID)
		}
		seen[fk.ID] = true
		raw, err := base64.StdEncoding.Strict().DecodeString(fk.Key)
		if err != nil || len(raw) != 32 {
			return nil, fmt.Errorf("keys[%d] (%s): key must be 32 bytes of base64", i, fk.ID)
		}
		kk, err := newKeyringKey(fk.ID, fk.Created, raw)
		if err != nil {
			return nil, fmt.Errorf("keys[%d] (%s): %w", i, fk.ID, err)
		}
		k.keys = append(k.keys, kk)
	}
	return k, nil
}

func newKeyringKey(id string, created time.Time, raw []byte) (keyringKey, error) {
	block, err := aes.NewCipher(raw)
	if err != nil {
		return keyringKey{}, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return keyringKey{}, err
	}
	return keyringKey{id: id, created: created, raw: raw, aead: aead}, nil
}

// Path is the file the keyring was loaded from.
func (k *Keyring) Path() string { return k.path }

// NewestKeyID is the id of the key that seals new secrets.
func (k *Keyring) NewestKeyID() string { return k.keys[len(k.keys)-1].id }

// KeyIDs lists the key ids, oldest first.
func (k *Keyring) KeyIDs() []string {
	ids := make([]string, len(k.keys))
	for i, kk := range k.keys {
		ids[i] = kk.id
	}
	return ids
}

// String describes the keyring without its keys.
func (k *Keyring) String() string {
	if k == nil {
		return "kms.Keyring(nil)"
	}
	return fmt.Sprintf("kms.Keyring{path: %s, keys: %d}", k.path, len(k.keys))
}

// Format keeps key material out of every fmt verb (%+v would otherwise print the raw keys).
func (k *Keyring) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, k.String()) }

// seal encrypts plaintext under the newest key and returns a local: reference.
func (k *Keyring) seal(name string, plaintext []byte) (string, error) {
	kk := k.keys[len(k.keys)-1]
	header := localHeader(kk.id, name)
	nonce := make([]byte, gcmNonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := append(header, nonce...)
	out = kk.aead.Seal(out, nonce, plaintext, header)
	return string(KindLocal) + ":" + base64.StdEncoding.EncodeToString(out), nil
}

// open decrypts a decoded local envelope with the key it names.
func (k *Keyring) open(env localEnvelope) ([]byte, error) {
	for _, kk := range k.keys {
		if kk.id == env.keyID {
			pt, err := kk.aead.Open(nil, env.nonce, env.ciphertext, env.header)
			if err != nil {
				return nil, errors.New("authentication failed (tampered reference or wrong keyring)")
			}
			return pt, nil
		}
	}
	return nil, fmt.Errorf("key %q is not in keyring %s", env.keyID, k.path)
}

// Keygen creates the keyring file at path with one fresh key, or appends a fresh key to an existing
// one, which then seals every new secret while the older keys keep opening older references. The file
// is replaced atomically (temporary file, fsync, rename, directory fsync) with mode 0600. It returns
// the new key's id.
// It is meant for the CLI (one operator at a time): concurrent Keygen runs on one file may lose a key.
func Keygen(path string) (keyID string, err error) {
	kf := keyringFile{Version: keyringVersion}
	if _, statErr := os.Stat(path); statErr == nil {
		existing, err := LoadKeyring(path)
		if err != nil {
			return "", err
		}
		for _, kk := range existing.keys {
			kf.Keys = append(kf.Keys, keyringFileKey{ID: kk.id, Created: kk.created, Key: base64.StdEncoding.EncodeToString(kk.raw)})
		}
	} else if !errors.Is(statErr, fs.ErrNotExist) {
		return "", fmt.Errorf("kms: keyring: %w", statErr)
	}
	raw := make([]byte, 32)
	suffix := make([]byte, 4)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	if _, err := rand.Read(suffix); err != nil {
		return "", err
	}
	now := time.Now().UTC().Truncate(time.Second)
	keyID = now.Format("20060102T150405Z") + "-" + hex.EncodeToString(suffix)
	kf.Keys = append(kf.Keys, keyringFileKey{ID: keyID, Created: now, Key: base64.StdEncoding.EncodeToString(raw)})
	data, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return "", err
	}
	data = append(data, '\n')
	if err := relay.WriteFileAtomic(path, 0o600, func(w io.Writer) error { _, err := w.Write(data); return err }); err != nil {
		return "", fmt.Errorf("kms: keyring %s: %w", path, err)
	}
	return keyID, nil
}
