package submit

import (
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/relay"
)

// smallTmpfs mounts a tmpfs of the given size (e.g. "16k") on a fresh directory, or skips the test
// where mounting is not possible (not root, no mount permission in the container).
func smallTmpfs(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	return dir
}

// sendBody submits one reply with the given body on the dev listener and returns the final reply.
func sendBody(t *testing.T, h *harness, body string) string {
	t.Helper()
	rc := dialRaw(t, addrOf(t, h, "dev"))
	rc.authPlain("demo", "demo")
	rc.expect("MAIL FROM:<x@example.org>", "250 ")
	rc.expect("RCPT TO:<customer@example.net>", "250 ")
	rc.expect("DATA", "354 ")
	rc.send("From: support@example.com\r\nIn-Reply-To: <t@example.net>\r\n\r\n" + body + ".\r\n")
	got := rc.reply()
	rc.expect("NOOP", "250 ")
	return got
}

// A full disk answers 452 4.3.1 wherever it is met: the raw DATA file, the spool draft, or an error a
// layer below wrapped as a local error.
func TestDiskFull(t *testing.T) {
	body := strings.Repeat("a line of the agent's reply, repeated to fill a small disk\r\n", 900) // ~54 KB

	t.Run("raw DATA file on a full tmpfs", func(t *testing.T) {
		// Raw DATA stays in memory up to 1 MiB: only a larger message spills to the temporary directory.
		large := strings.Repeat(body, 24) // ~1.3 MB
		full := smallTmpfs(t, "16k")
		h := startServer(t, func(o *Options) { o.TempDir, o.MaxMessageBytes = full, 8<<20 }, nil)
		if got := sendBody(t, h, large); !strings.HasPrefix(got, "452 4.3.1 insufficient system storage") {
			t.Fatalf("reply %q, want 452 4.3.1", got)
		}
		if v := testutil.ToFloat64(h.metrics.MessagesRejected.WithLabelValues("data", "insufficient_storage")); v != 1 {
			t.Errorf("insufficient_storage rejections %v", v)
		}
	})
	t.Run("spool on a full tmpfs", func(t *testing.T) {
		full := smallTmpfs(t, "16k")
		h := startServer(t, nil, nil)
		h.spool.dir = full
		if got := sendBody(t, h, body); !strings.HasPrefix(got, "452 4.3.1 ") {
			t.Fatalf("reply %q, want 452 4.3.1", got)
		}
		if len(h.spool.Messages()) != 0 {
			t.Fatal("message committed")
		}
	})
	// Without a mountable file system (and for EDQUOT, which a tmpfs does not give): the error shape a
	// composer writing to a full spool returns.
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT} {
		t.Run("wrapped "+errno.Error(), func(t *testing.T) {
			full := composerFunc(func(_ context.Context, src io.Reader, _ io.Writer, _ *Submission) (*Composed, error) {
				_, _ = io.Copy(io.Discard, src)
				return nil, relay.Wrap(&fs.PathError{Op: "write", Path: "/var/spool/mailgate/draft-1", Err: errno},
					451, relay.CodeTempLocal, "local", "local error in processing")
			})
			h := startServer(t, nil, full)
			got := sendBody(t, h, "short\r\n")
			if !strings.HasPrefix(got, "452 4.3.1 ") || strings.Contains(got, "/var/") {
				t.Fatalf("reply %q, want 452 4.3.1 without the path", got)
			}
		})
	}
}

func TestFreeSpace(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	if err := FreeSpace(dir, 1)(ctx); err != nil {
		t.Fatalf("1 byte threshold: %v", err)
	}
	if err := FreeSpace(dir, 0)(ctx); err != nil {
		t.Fatalf("disabled: %v", err)
	}
	err := FreeSpace(dir, 1<<62)(ctx)
	if err == nil || !strings.Contains(err.Error(), "spool.min_free_bytes") {
		t.Fatalf("threshold above the disk: %v", err)
	}
	if err := FreeSpace(dir+"/missing", 1)(ctx); err == nil {
		t.Fatal("missing directory passes")
	}
	// A real small file system: 1 MiB, of which a 600 KiB file leaves less than 512 KiB.
	if os.Geteuid() == 0 {
		small := smallTmpfs(t, "1m")
		if err := FreeSpace(small, 512<<10)(ctx); err != nil {
			t.Fatalf("empty 1 MiB tmpfs: %v", err)
		}
		if err := os.WriteFile(small+"/fill", make([]byte, 600<<10), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := FreeSpace(small, 512<<10)(ctx); err == nil {
			t.Fatal("full tmpfs passes")
		}
	}
}
