package relay_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/mailgate/mailgate/relay"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keyring")
	write := func(s string) func(io.Writer) error {
		return func(w io.Writer) error { _, err := io.WriteString(w, s); return err }
	}
	if err := relay.WriteFileAtomic(path, 0o600, write("first")); err != nil {
		t.Fatal(err)
	}
	if err := relay.WriteFileAtomic(path, 0o600, write("second")); err != nil {
		t.Fatal(err)
	}
	// A writer that fails half way leaves the previous content and no temporary file.
	failed := relay.WriteFileAtomic(path, 0o600, func(w io.Writer) error {
		io.WriteString(w, "half")
		return errors.New("disk full")
	})
	if failed == nil {
		t.Fatal("a failed write was reported as written")
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != "second" {
		t.Fatalf("content %q %v, want the last complete write", b, err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode().Perm())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
}
