// Package kms resolves mailgate's secret references and keeps the resulting values in memory only.
//
// A secret field in the configuration never holds the secret itself in production; it holds a
// reference that says where the value lives:
//
//	kms:<base64>   AWS KMS. The base64 text is mailgate's envelope: version byte 1, a 2-byte big-endian
//	               name length, the secret's name, then the KMS CiphertextBlob. The name travels inside
//	               the envelope so Decrypt can rebuild the exact encryption context
//	               {"service": "mailgate", "secret": <name>} ("secret" is omitted for an unnamed
//	               secret). KMS refuses a ciphertext whose context differs, so a blob whose name was
//	               edited, or that was copied from another secret's field, does not decrypt.
//	local:<base64> A local keyring file of AES-256-GCM keys (single-machine installs, development).
//	               Envelope: version byte 1, key-id length byte, key id, 2-byte name length, name,
//	               12-byte nonce, ciphertext and tag. Everything before the nonce is the GCM additional
//	               data, so the key id and the name are authenticated too. New secrets use the newest
//	               key; older keys stay in the file, so rotation (Keygen) is transparent.
//	env:NAME       An environment variable.
//	file:PATH      A file's content, with one trailing newline removed (what `echo` and editors add).
//	               The file must be a regular file that group and others cannot access (0600, 0400)
//	               of at most 64 KiB, and is read bounded (ReadSecretFile), so a world-readable
//	               secret or file:/dev/zero is refused by check-config and by the daemon alike.
//
// Anything else is a plain-text value, accepted only when the Resolver is told the configuration is a
// development one.
//
// Values are decrypted once, when the configuration is loaded or reloaded, and held in a Secret: a
// type that redacts itself in every output path (fmt verbs, slog, JSON, text marshalling). The only
// way out is Secret.Reveal, called where the value is put on the wire. Errors from this package name
// the secret and the reference kind, never the plaintext nor the ciphertext.
//
// Seal and Open are the same machinery for values mailgate stores itself (OAuth refresh tokens): the
// store only ever sees a sealed reference.
package kms
