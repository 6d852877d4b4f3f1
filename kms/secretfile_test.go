package kms

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestSecretFileRefused: a file: secret readable by others, larger than 64 KiB, or not a regular file
// (file:/dev/zero) is refused by name with the fix, without reading it whole.
func TestSecretFileRefused(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, size int, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Repeat("s", size)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ok600 := write("ok600", 40, 0o600)
	ok400 := write("ok400", MaxSecretFileBytes, 0o400)
	for _, p := range []string{ok600, ok400} {
		if err := CheckSecretFile(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	r := &Resolver{}
	for p, want := range map[string]string{
		write("world", 40, 0o644):                 "chmod 600",
		write("group", 40, 0o640):                 "chmod 600",
		write("big", MaxSecretFileBytes+1, 0o600): "over the 64 KiB",
		"/dev/zero":                   "not a regular file",
		filepath.Join(dir, "missing"): "no such file",
	} {
		err := CheckSecretFile(p)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), p) {
			t.Errorf("CheckSecretFile(%s) = %v, want it to name the path and say %q", p, err, want)
		}
		if _, err := r.Resolve(context.Background(), "file:"+p); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Resolve(file:%s) = %v, want %q", p, err, want)
		}
	}
	s, err := r.Resolve(context.Background(), "file:"+ok400)
	if err != nil || len(s.Reveal()) != MaxSecretFileBytes {
		t.Errorf("64 KiB secret: %v", err)
	}
}
