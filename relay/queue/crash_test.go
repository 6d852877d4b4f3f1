package queue

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/mailgate/mailgate/relay"
)

// helperDirEnv makes the test binary act as a committing process for TestKill9DuringCommits;
// with helperDeliveredEnv it also delivers, appending to that file (TestKill9DuringLoad), and
// helperRoundEnv tells its message numbers from an earlier process's.
const (
	helperDirEnv       = "MAILGATE_QUEUE_KILL_HELPER_DIR"
	helperDeliveredEnv = "MAILGATE_QUEUE_KILL_HELPER_DELIVERED"
	helperRoundEnv     = "MAILGATE_QUEUE_KILL_HELPER_ROUND"
)

// killBody is the body of message n in the kill tests.
func killBody(n string) string { return strings.Repeat("message "+n+"\r\n", 500) }

// recordingTransport delivers by appending "delivered <id>" to a file — or "garbage <id>" when the
// body is not the one message n was committed with — so a later process can count deliveries.
func recordingTransport(path string) TransportMap {
	return TransportMap{"upstream": transportFunc(func(ctx context.Context, m *relay.Message) relay.Result {
		rc, err := m.Open()
		if err != nil {
			return relay.Failed(len(m.Recipients), err)
		}
		body, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return relay.Failed(len(m.Recipients), err)
		}
		word := "delivered"
		if string(body) != killBody(m.MessageID) || m.Size != int64(len(body)) {
			word = "garbage"
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return relay.Failed(len(m.Recipients), err)
		}
		_, err = fmt.Fprintf(f, "%s %s\n", word, m.QueueID)
		f.Close()
		if err != nil {
			return relay.Failed(len(m.Recipients), err)
		}
		return relay.Result{Reply: "250 ok", Errs: make([]error, len(m.Recipients))}
	})}
}

// TestKill9HelperProcess is not a test on its own: run by the kill tests, it commits messages from four
// goroutines as fast as it can and prints each id only after Commit returned, until killed.
func TestKill9HelperProcess(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("helper process for TestKill9DuringCommits and TestKill9DuringLoad")
	}
	var tr Transports = TransportMap{}
	if path := os.Getenv(helperDeliveredEnv); path != "" {
		tr = recordingTransport(path)
	}
	q, err := New(Options{Dir: dir, Transports: tr, Logger: quietLogger(t), SegmentBytes: 1 << 20})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	if os.Getenv(helperDeliveredEnv) != "" {
		go q.Run(context.Background())
	}
	round := os.Getenv(helperRoundEnv)
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
				msgID := fmt.Sprintf("%s%d", round, n)
				io.WriteString(d, killBody(msgID))
				id, err := d.Commit(context.Background(), relay.Envelope{
					Channel: "Support", Transport: "upstream", Recipients: []string{"a@example.net"},
					MessageID: msgID,
				})
				if err != nil {
					fmt.Println("error", err)
					os.Exit(1)
				}
				mu.Lock()
				fmt.Printf("committed %s %s\n", id, msgID)
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
		want := killBody(n)
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

// killHelper starts a helper process on dir, reads its "committed" lines until it has reported between
// lo and hi more (a random point) or a deadline, kills it with SIGKILL, and adds every id it reported
// (also those printed just before the kill) to committed.
func killHelper(t *testing.T, dir string, env []string, committed map[string]string, want int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9HelperProcess$", "-test.count=1")
	cmd.Env = append(append(os.Environ(), helperDirEnv+"="+dir), env...)
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	deadline := time.Now().Add(20 * time.Second)
	n := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "committed" {
			committed[f[1]] = f[2]
			n++
		} else if len(f) > 0 && f[0] == "error" {
			t.Fatalf("helper: %s", sc.Text())
		}
		if n >= want || time.Now().After(deadline) {
			break
		}
	}
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "committed" {
			committed[f[1]] = f[2]
			n++
		}
	}
	cmd.Wait()
	if n < 10 {
		t.Fatalf("helper committed only %d messages", n)
	}
}

// TestKill9DuringLoad kills a process three times at random points while four clients commit and the
// queue delivers, restarting it on the same spool each time; then a last start delivers what is left.
// Every message ever reported committed must have been delivered at least once, with its own body.
func TestKill9DuringLoad(t *testing.T) {
	dir := t.TempDir()
	delivered := filepath.Join(t.TempDir(), "delivered")
	committed := map[string]string{}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for round := range 3 {
		want := 50 + rng.IntN(250)
		killHelper(t, dir, []string{helperDeliveredEnv + "=" + delivered, fmt.Sprintf("%s=r%d-", helperRoundEnv, round)}, committed, want)
		t.Logf("round %d: killed after %d+ commits", round, want)
	}
	h := open(t, dir, recordingTransport(delivered), nil)
	h.run(t)
	waitFor(t, "the last deliveries", 30*time.Second, func() bool { return len(h.q.List()) == 0 })
	data, err := os.ReadFile(delivered)
	must(t, err)
	count := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 || f[0] != "delivered" {
			t.Errorf("delivery record %q", line)
			continue
		}
		count[f[1]]++
	}
	dups := 0
	for id, n := range committed {
		if count[id] == 0 {
			t.Errorf("committed message %s (%s) never delivered", id, n)
		}
		if count[id] > 1 {
			dups++
		}
	}
	t.Logf("%d committed, %d deliveries, %d delivered more than once", len(committed), len(count), dups)
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
