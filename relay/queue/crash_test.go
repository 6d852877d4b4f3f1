package queue

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/relay"
)

// helperDirEnv makes the test binary act as a committing process for TestKill9DuringCommits.
const helperDirEnv = "MAILGATE_QUEUE_KILL_HELPER_DIR"

// TestKill9HelperProcess is not a test on its own: run by TestKill9DuringCommits, it commits messages
// from four goroutines as fast as it can and prints each id only after Commit returned, until killed.
func TestKill9HelperProcess(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("helper process for TestKill9DuringCommits")
	}
	q, err := New(Options{Dir: dir, Transports: TransportMap{}, Logger: quietLogger(t)})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	var mu sync.Mutex
	seq := 0
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				seq++
				n := seq
				mu.Unlock()
				d, err := q.Create()
				if err != nil {
					fmt.Println("error", err)
					os.Exit(1)
				}
				io.WriteString(d, strings.Repeat(fmt.Sprintf("message %d\r\n", n), 500))
				id, err := d.Commit(context.Background(), relay.Envelope{
					Channel: "Support", Transport: "upstream", Recipients: []string{"a@example.net"},
					MessageID: fmt.Sprint(n),
				})
				if err != nil {
					fmt.Println("error", err)
					os.Exit(1)
				}
				mu.Lock()
				fmt.Printf("committed %s %d\n", id, n)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestKill9DuringCommits kills a process with SIGKILL while it commits, then checks that every message
// it reported as committed is in the spool whole, and that nothing had to be quarantined.
func TestKill9DuringCommits(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9HelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperDirEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	defer cmd.Process.Kill()
	committed := map[string]string{}
	sc := bufio.NewScanner(out)
	deadline := time.Now().Add(20 * time.Second)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "committed" {
			committed[f[1]] = f[2]
		} else if len(f) > 0 && f[0] == "error" {
			t.Fatalf("helper: %s", sc.Text())
		}
		if len(committed) >= 200 || time.Now().After(deadline) {
			break
		}
	}
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	// Lines printed before the kill but not yet read are committed too.
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "committed" {
			committed[f[1]] = f[2]
		}
	}
	cmd.Wait()
	if len(committed) < 20 {
		t.Fatalf("helper committed only %d messages", len(committed))
	}

	h := open(t, dir, TransportMap{}, nil)
	defer h.closeNow(t)
	if v := testutil.ToFloat64(h.m.QueueQuarantined); v != 0 {
		t.Errorf("%v entries quarantined after kill -9", v)
	}
	for id, n := range committed {
		e, ok := h.q.Get(id)
		if !ok {
			t.Errorf("committed message %s (%s) lost", id, n)
			continue
		}
		body, err := spoolBody(h.q, id)
		want := strings.Repeat("message "+n+"\r\n", 500)
		if err != nil || body != want || e.Envelope.MessageID != n || e.Size != int64(len(want)) {
			t.Errorf("message %s: body %d bytes (%v), metadata %+v", id, len(body), err, e)
		}
	}
	// Anything beyond the reported ones was committed in the instant before the kill: still whole.
	if n := len(h.q.List()); n < len(committed) {
		t.Errorf("%d entries resumed, %d were committed", n, len(committed))
	}
	t.Logf("%d messages reported committed, %d resumed", len(committed), len(h.q.List()))
}

func TestDirSyncerErrorIsSticky(t *testing.T) {
	s := newDirSyncer(t.TempDir())
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Sync(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if s.started > 20 || s.done != s.started {
		t.Errorf("started %d done %d", s.started, s.done)
	}
	bad := newDirSyncer(t.TempDir() + "/missing")
	if bad.Sync() == nil || bad.Sync() == nil {
		t.Error("a failed directory fsync did not stick")
	}
}
