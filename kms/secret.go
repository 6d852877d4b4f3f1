package kms

import (
	"fmt"
	"log/slog"
)

// redacted is what a Secret shows wherever it is printed, logged or marshalled.
const redacted = "[redacted]"

// Secret holds a decrypted secret value in memory. Every formatting and marshalling path prints
// "[redacted]", so a Secret can sit in option structs that end up in logs or debug dumps without
// leaking; Reveal is the single, greppable way to get the value. The zero Secret is empty.
type Secret struct {
	value string
}

// NewSecret wraps a value already in memory (a plain development value, or one read from a trusted
// source) so it gets the same protection as a decrypted one.
func NewSecret(value string) Secret { return Secret{value: value} }

// Reveal returns the secret value. Call it only where the value goes on the wire.
func (s Secret) Reveal() string { return s.value }

// IsZero reports whether the secret is empty (unset).
func (s Secret) IsZero() bool { return s.value == "" }

// String redacts the value (fmt %s, %v, Print).
func (s Secret) String() string { return redacted }

// GoString redacts the value (fmt %#v).
func (s Secret) GoString() string { return "kms.Secret{" + redacted + "}" }

// Format redacts the value for every fmt verb and flag (%+v, %q, %x, ...), which String alone would
// not cover (%x on a struct prints its fields).
func (s Secret) Format(f fmt.State, verb rune) {
	if verb == 'v' && f.Flag('#') {
		_, _ = f.Write([]byte(s.GoString()))
		return
	}
	_, _ = f.Write([]byte(redacted))
}

// LogValue redacts the value in log/slog output, whatever the handler.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalJSON redacts the value in JSON output (status pages, debug dumps).
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText redacts the value in text encodings (YAML, JSON map keys, ...).
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }
