package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestFilesPrivate: the database and its -wal and -shm are 0600 under the usual 022 umask, for a new
// database and for one an older mailgate left world-readable.
func TestFilesPrivate(t *testing.T) {
	ctx := context.Background()
	check := func(t *testing.T, path string) {
		t.Helper()
		for _, f := range []string{path, path + "-wal", path + "-shm"} {
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatalf("%s: %v (the store should be open in WAL mode)", f, err)
			}
			if m := fi.Mode().Perm(); m != 0o600 {
				t.Errorf("%s has mode %#o, want 0600", filepath.Base(f), m)
			}
		}
	}
	t.Run("new", func(t *testing.T) {
		s, path := openStore(t)
		if err := s.RecordBounce(ctx, bounce("a@example.net", time.Now())); err != nil {
			t.Fatal(err)
		}
		check(t, path)
	})
	t.Run("existing 0644", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "old.db")
		s, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.RecordBounce(ctx, bounce("a@example.net", time.Now())); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{path, path + "-wal", path + "-shm"} {
			if err := os.Chmod(f, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
		s, err = Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := s.RecordBounce(ctx, bounce("b@example.net", time.Now())); err != nil {
			t.Fatal(err)
		}
		check(t, path)
	})
}
