package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// binary is the mailgate binary built once for the end-to-end tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "mailgate-e2e-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "mailgate")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build mailgate: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// instance is a mailgate daemon started from the built binary.
type instance struct {
	t        *testing.T
	dir      string // data directory (spool, store)
	config   string
	smtp     string // submission address
	admin    string
	events   string // events listener address ({{EVENTS}} in an ses: configuration)
	token    string // the admin bearer token, in {{DIR}}/admin.token
	cert     peertest.Cert
	proc     *peertest.Process
	extraEnv []string
}

// e2eConfig is the YAML of a production-style (non-development) configuration. {{SMTP}}, {{ADMIN}},
// {{EVENTS}}, {{DIR}}, {{CERT}}, {{KEY}}, {{HASH}} are filled in by newInstance.
const e2eConfigHead = `
hostname: mailgate.test
listeners:
  - name: submission
    address: {{SMTP}}
    tls: starttls
tls:
  cert_file: {{CERT}}
  key_file: {{KEY}}
admin:
  address: {{ADMIN}}
  token_file: {{DIR}}/admin.token
spool:
  dir: {{DIR}}/spool
store:
  path: {{DIR}}/mailgate.db
queue:
  retry_initial: 300ms
  retry_max: 1s
  max_lifetime: 1h
business_units:
  - name: BU
    time_zone: Europe/Berlin
  - name: BU2
    time_zone: Asia/Tokyo
    accepted_extensions: [.png, .pdf]
users:
  - login: alice
    name: Alice Agent
    password_hash: "{{HASH}}"
    role: agent
    business_unit: BU
  - login: bob
    name: Bob Agent
    password_hash: "{{HASH}}"
    role: limited
    business_unit: BU
`

// supportRoles: alice's role may reply and start conversations on Support, bob's may only reply.
const supportRoles = `roles:
  - name: agent
    channels:
      Support: [reply, outbound]
  - name: limited
    channels:
      Support: [reply]
`

// bcrypt of "secret-pw" (cost 4, test only).
const alicePassword = "secret-pw"

func newInstance(t *testing.T, yamlBody string) *instance {
	t.Helper()
	in := &instance{t: t, dir: t.TempDir(), cert: peertest.SelfSignedCert(t)}
	in.smtp = "127.0.0.1:" + strconv.Itoa(peertest.FreePort(t))
	in.admin = "127.0.0.1:" + strconv.Itoa(peertest.FreePort(t))
	in.events = "127.0.0.1:" + strconv.Itoa(peertest.FreePort(t))
	in.token = "e2e-admin-token-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	if err := os.WriteFile(filepath.Join(in.dir, "admin.token"), []byte(in.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hash := hashPassword(t, alicePassword)
	r := strings.NewReplacer("{{SMTP}}", in.smtp, "{{ADMIN}}", in.admin, "{{EVENTS}}", in.events, "{{DIR}}", in.dir,
		"{{CERT}}", in.cert.CertFile, "{{KEY}}", in.cert.KeyFile, "{{HASH}}", hash)
	in.config = filepath.Join(in.dir, "mailgate.yaml")
	if err := os.WriteFile(in.config, []byte(r.Replace(e2eConfigHead+yamlBody)), 0o600); err != nil {
		t.Fatal(err)
	}
	return in
}

func hashPassword(t *testing.T, pw string) string {
	t.Helper()
	cmd := exec.Command(binary, "hash-password", "-cost", "4")
	cmd.Stdin = strings.NewReader(pw + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hash-password: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func (in *instance) start() {
	in.t.Helper()
	in.proc = peertest.Start(in.t, "mailgate", in.smtp, append(in.extraEnv, "AWS_EC2_METADATA_DISABLED=true"),
		binary, "serve", "--config", in.config)
	if err := peertest.WaitPort(in.admin, 10*time.Second); err != nil {
		in.t.Fatalf("admin listener: %v", err)
	}
}

// kill9 ends the daemon the way a crash would: no shutdown, no flush.
func (in *instance) kill9() {
	in.t.Helper()
	_ = syscall.Kill(-in.proc.Cmd.Process.Pid, syscall.SIGKILL)
	_, _ = in.proc.Cmd.Process.Wait()
}

func (in *instance) logs() string {
	b, _ := os.ReadFile(in.proc.Log)
	return string(b)
}

// mailgate runs a subcommand against this instance's config and returns stdout+stderr and the exit code.
func (in *instance) mailgate(args ...string) (string, int) {
	in.t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(append(os.Environ(), "AWS_EC2_METADATA_DISABLED=true"), in.extraEnv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	code := exitCode(in.t, cmd.Run())
	return out.String(), code
}

// exitCode is the exit status behind a finished command's Run or Wait error.
func exitCode(t testing.TB, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

// swaks submits one message as alice over STARTTLS (verifying mailgate's certificate).
func (in *instance) swaks(extra ...string) (string, int) {
	in.t.Helper()
	return in.swaksAs("alice", extra...)
}

// swaksAs submits as login (the e2e users share alice's password).
func (in *instance) swaksAs(login string, extra ...string) (string, int) {
	in.t.Helper()
	host, port, _ := net.SplitHostPort(in.smtp)
	args := []string{"--server", host, "--port", port, "--tls", "--tls-verify", "--tls-ca-path", in.cert.CertFile,
		"--auth", "LOGIN", "--auth-user", login, "--auth-password", alicePassword}
	return peertest.Swaks(in.t, append(args, extra...)...)
}

// waitFor polls cond every 50 ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
