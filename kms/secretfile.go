package kms

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// MaxSecretFileBytes bounds a file: secret (a password, a client secret, a token; a private key in PEM
// fits easily). The read is bounded too, so file:/dev/zero or a growing file cannot exhaust memory.
const MaxSecretFileBytes = 64 << 10

// CheckSecretFile reports why the file at path may not hold a secret: it must be a regular file no
// larger than MaxSecretFileBytes that neither group nor others can read or write (0600 or 0400; the
// owner's execute bit is tolerated). Errors name the path and the fix. Configuration validation and
// ReadSecretFile both use it, so check-config refuses exactly what the daemon would.
func CheckSecretFile(path string) error {
	// Stat before opening: opening a FIFO for reading would wait for a writer.
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkSecretFileInfo(fi, path)
}

func checkSecretFileInfo(fi os.FileInfo, path string) error {
	switch {
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is not a regular file (%s); write the secret to a file of its own", path, fi.Mode().Type())
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%s has mode %#o: a secret file must not be readable by group or others; run chmod 600 %s", path, fi.Mode().Perm(), path)
	case fi.Size() > MaxSecretFileBytes:
		return fmt.Errorf("%s is %d bytes, over the %d KiB a secret file may hold; point file: at the secret alone", path, fi.Size(), MaxSecretFileBytes>>10)
	}
	return nil
}

// ReadSecretFile reads a file: secret after CheckSecretFile's checks, reading at most
// MaxSecretFileBytes+1 bytes whatever the file claims.
func ReadSecretFile(path string) ([]byte, error) {
	if err := CheckSecretFile(path); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Checked again on what was opened, in case the path changed in between.
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := checkSecretFileInfo(fi, path); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSecretFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > MaxSecretFileBytes {
		clear(b)
		return nil, errors.New(path + " grew over the limit of a secret file while it was read")
	}
	return b, nil
}
