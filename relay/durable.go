package relay

import (
	"io"
	"os"
	"path/filepath"
)

// WriteFileAtomic replaces path with what write produces, mode perm, so that a crash at any point leaves
// the old file or the new one, never a torn one, and a successful return means the new one is on disk:
// a temporary file in the same directory is written, fsynced and renamed over path, and the directory is
// fsynced so the rename itself survives a power cut (what chasquid's safeio leaves out and mox does).
// It is mailgate's one durable-write helper (keyring, outbox, spool quarantine); the spool's hot path
// has its own group-committed segments.
func WriteFileAtomic(path string, perm os.FileMode, write func(io.Writer) error) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	err = tmp.Chmod(perm)
	if err == nil {
		err = write(tmp)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
