// Package peertest starts the real third-party peers that mailgate's tests talk to — Postfix's
// smtp-sink, a private Postfix smtpd (CHUNKING, stateful refusals), Node's smtp-server,
// oauth2-mock-server (also shaped like Entra ID: EntraMock), aws-ses-v2-local, local-kms — and swaks
// as a client; where no peer exists it holds the stand-in
// (GraphFake: Microsoft Graph's mail API, which has no local emulator) and test credentials
// (NewClientCertificate). It is imported by _test.go files only.
//
// Every peer listens on 127.0.0.1 on a free port, runs in its own process group, and is stopped by
// PID (the whole group) when the test ends. Peers are installed by scripts/install-test-deps.sh; a
// missing peer fails the test with the command to run, never skips it, so a suite that did not talk
// to its peers cannot pass.
package peertest

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Home is where scripts/install-test-deps.sh installs the peers.
func Home() string {
	if h := os.Getenv("MAILGATE_PEERS"); h != "" {
		return h
	}
	return "/opt/mailgate-peers"
}

func need(t testing.TB, path string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("peer %s is missing: run scripts/install-test-deps.sh (%v)", path, err)
	}
	return path
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Process is a peer started by Start.
type Process struct {
	Name string
	Addr string // host:port it listens on
	Log  string // file holding its stdout and stderr
	Cmd  *exec.Cmd
	once sync.Once
}

// Stop kills the peer's process group and waits for it. Safe to call more than once.
func (p *Process) Stop() {
	p.once.Do(func() {
		if p.Cmd.Process == nil {
			return
		}
		_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = p.Cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
}

// Start runs argv in its own process group with env added to the test's environment, waits up to 20 s
// for addr to accept TCP connections, and stops the process when the test ends.
func Start(t testing.TB, name, addr string, env []string, argv ...string) *Process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	logf.Close()
	p := &Process{Name: name, Addr: addr, Log: logPath, Cmd: cmd}
	t.Cleanup(p.Stop)
	if err := WaitPort(addr, 20*time.Second); err != nil {
		out, _ := os.ReadFile(logPath)
		p.Stop()
		t.Fatalf("%s did not open %s: %v\n%s", name, addr, err, out)
	}
	return p
}

// WaitPort waits until addr accepts a TCP connection.
func WaitPort(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// Sink is a running Postfix smtp-sink.
type Sink struct {
	*Process
	DumpDir string // every transaction saved here as a file (with X-Mail-Args/X-Rcpt-Args headers)
}

// SMTPSink starts /usr/sbin/smtp-sink on a free loopback port, dumping each transaction into a fresh
// directory. opts are extra smtp-sink options for failure injection, e.g. "-f", "RCPT" (5xx on RCPT),
// "-r", "." (4xx after DATA), "-Q", "MAIL" (421 and disconnect). smtp-sink offers no STARTTLS; "-a" hides
// its (broken) AUTH advertisement.
func SMTPSink(t testing.TB, opts ...string) *Sink {
	t.Helper()
	return SMTPSinkAt(t, "127.0.0.1:"+strconv.Itoa(FreePort(t)), opts...)
}

// SMTPSinkAt is SMTPSink on a given address: tests that stop an upstream and start another with other
// behaviour at the same address (a failing one, then a healthy one) use it.
func SMTPSinkAt(t testing.TB, addr string, opts ...string) *Sink {
	t.Helper()
	bin := need(t, "/usr/sbin/smtp-sink")
	// smtp-sink drops privileges to nobody when run as root, so its dump directory cannot live under
	// t.TempDir (whose parents are 0700): make one directly under the system temp dir.
	dump, err := os.MkdirTemp("", "mailgate-sink-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dump) })
	_ = os.Chmod(dump, 0o777)
	argv := []string{bin, "-c", "-d", dump + "/%Y%m%d%H%M%S."}
	if os.Geteuid() == 0 {
		argv = append(argv, "-u", "nobody")
	}
	argv = append(argv, opts...)
	argv = append(argv, addr, "1024")
	return &Sink{Process: Start(t, "smtp-sink", addr, nil, argv...), DumpDir: dump}
}

// Messages returns the dumped transactions, oldest first (each file: the envelope as X-Mail-Args /
// X-Rcpt-Args headers, then the message). The dump names carry only the second, so the files are
// ordered by modification time (nanoseconds here), then name.
func (s *Sink) Messages(t testing.TB) []string {
	t.Helper()
	entries, err := os.ReadDir(s.DumpDir)
	if err != nil {
		t.Fatal(err)
	}
	mtime := func(e os.DirEntry) time.Time {
		info, err := e.Info()
		if err != nil {
			return time.Time{}
		}
		return info.ModTime()
	}
	sort.SliceStable(entries, func(i, j int) bool {
		ti, tj := mtime(entries[i]), mtime(entries[j])
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		return entries[i].Name() < entries[j].Name()
	})
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(s.DumpDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

// Count is the number of messages smtp-sink has received so far (from its -c counters).
func (s *Sink) Count() int {
	b, _ := os.ReadFile(s.Log)
	i := bytes.LastIndex(b, []byte("mesg="))
	if i < 0 {
		return 0
	}
	f := b[i+5:]
	j := 0
	for j < len(f) && f[j] >= '0' && f[j] <= '9' {
		j++
	}
	n, _ := strconv.Atoi(string(f[:j]))
	return n
}

// WaitCount waits until the sink has received at least n messages, failing the test after timeout.
func (s *Sink) WaitCount(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for s.Count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("smtp-sink received %d messages, want %d", s.Count(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Cert is a self-signed certificate for 127.0.0.1, ::1 and localhost.
type Cert struct {
	CertFile, KeyFile string
	Pool              *x509.CertPool // trusts exactly this certificate
}

// SelfSignedCert writes a fresh self-signed certificate into a temporary directory.
func SelfSignedCert(t testing.TB) Cert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := Cert{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem"), Pool: x509.NewCertPool()}
	if err := os.WriteFile(c.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	c.Pool.AddCert(cert)
	return c
}

// NodeSMTPOptions configures the Node smtp-server upstream (a Microsoft-365-like server).
type NodeSMTPOptions struct {
	Addr              string // where it listens; empty = a free loopback port
	Cert              Cert   // its STARTTLS certificate; zero = a fresh self-signed one
	User, Pass        string // AUTH PLAIN/LOGIN credentials (default user/pass)
	StaticTokens      []string
	JWKSURL, Issuer   string // XOAUTH2 JWTs are verified against this JWKS (and issuer, if set)
	FailRcptRegex     string // matching recipients get 550
	TempfailRcptRegex string // matching recipients get 451
	MaxSize           int64  // advertised SIZE
	// DisabledCommands, e.g. ["STARTTLS"], hides them; PlainAuth=false hides PLAIN as Exchange does.
	DisabledCommands []string
	NoPlain          bool
	// HidePipelining stops the server advertising PIPELINING (RFC 2920).
	HidePipelining bool
	// Rules refuse chosen transactions with exact replies; see NodeRule.
	Rules []NodeRule
}

// NodeRule makes the Node server refuse: at "mail" a sender matching Match, at "rcpt" a recipient
// matching it, at "data" a message whose raw text matches it, with Reply (e.g. "553 5.7.1 Sender
// address rejected"). The server adds no enhanced code of its own, so each reply is exact.
type NodeRule struct {
	At    string `json:"at"`
	Match string `json:"match"`
	Reply string `json:"reply"`
}

// NodeSMTP is a running Node smtp-server.
type NodeSMTP struct {
	*Process
	Cert    Cert
	SaveDir string // every accepted message as a .eml file
}

// NodeSMTPServer starts relay/peertest/testdata/smtp-server.js under node.
func NodeSMTPServer(t testing.TB, o NodeSMTPOptions) *NodeSMTP {
	t.Helper()
	if o.Cert.CertFile == "" {
		o.Cert = SelfSignedCert(t)
	}
	save := t.TempDir()
	addr := o.Addr
	if addr == "" {
		addr = "127.0.0.1:" + strconv.Itoa(FreePort(t))
	}
	_, port, _ := net.SplitHostPort(addr)
	env := []string{
		"NODE_PATH=" + need(t, filepath.Join(Home(), "node", "node_modules")),
		"HOST=127.0.0.1", "PORT=" + port,
		"TLS_KEY=" + o.Cert.KeyFile, "TLS_CERT=" + o.Cert.CertFile,
		"SMTP_USER=" + or(o.User, "user"), "SMTP_PASS=" + or(o.Pass, "pass"),
		"XOAUTH2_TOKENS=" + strings.Join(o.StaticTokens, ","),
		"JWKS_URL=" + o.JWKSURL, "OAUTH_ISSUER=" + o.Issuer,
		"FAIL_RCPT_REGEX=" + o.FailRcptRegex, "TEMPFAIL_RCPT_REGEX=" + o.TempfailRcptRegex,
		"DISABLED_COMMANDS=" + strings.Join(o.DisabledCommands, ","),
		"SAVE_DIR=" + save,
	}
	if o.NoPlain {
		env = append(env, "NO_PLAIN=1")
	}
	if o.HidePipelining {
		env = append(env, "HIDE_PIPELINING=1")
	}
	if len(o.Rules) > 0 {
		rules, err := json.Marshal(o.Rules)
		if err != nil {
			t.Fatal(err)
		}
		env = append(env, "RULES="+string(rules))
	}
	if o.MaxSize > 0 {
		env = append(env, "SMTP_MAX_SIZE="+strconv.FormatInt(o.MaxSize, 10))
	}
	p := Start(t, "smtp-server", addr, env, "node", filepath.Join(sourceDir(), "testdata", "smtp-server.js"))
	return &NodeSMTP{Process: p, Cert: o.Cert, SaveDir: save}
}

// Accepted returns the JSON records the server logged for each accepted message
// (id, user, auth, tls, from, to, size, subject).
func (n *NodeSMTP) Accepted(t testing.TB) []map[string]any {
	t.Helper()
	f, err := os.Open(n.Log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["event"] == "accepted" {
			out = append(out, rec)
		}
	}
	return out
}

// sourceDir is this package's directory, so testdata is found from any test's working directory.
func sourceDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// OAuthMock is a running oauth2-mock-server.
type OAuthMock struct {
	*Process
	URL string // http://127.0.0.1:PORT; token endpoint URL+"/token", JWKS URL+"/jwks"
	// Issuer is the iss claim of its tokens (the mock says localhost even when bound to 127.0.0.1).
	Issuer string
}

// OAuth2Mock starts oauth2-mock-server on a free loopback port.
func OAuth2Mock(t testing.TB) *OAuthMock {
	t.Helper()
	port := strconv.Itoa(FreePort(t))
	bin := need(t, filepath.Join(Home(), "node", "node_modules", "oauth2-mock-server", "dist", "oauth2-mock-server.mjs"))
	p := Start(t, "oauth2-mock", "127.0.0.1:"+port, nil, "node", bin, "-a", "127.0.0.1", "-p", port)
	return &OAuthMock{Process: p, URL: "http://127.0.0.1:" + port, Issuer: "http://localhost:" + port}
}

// EntraMock starts oauth2-mock-server shaped like Microsoft Entra ID (testdata/entra-mock.mjs):
// client-credentials tokens carry aud = the .default scope's resource and roles = what roles grants
// ("<client_id> <resource>" or "<resource>" → application permissions); delegated tokens carry aud and
// scp. Tokens are signed by the mock; verify them against URL+"/jwks" and Issuer.
func EntraMock(t testing.TB, roles map[string][]string) *OAuthMock {
	t.Helper()
	port := strconv.Itoa(FreePort(t))
	mod := need(t, filepath.Join(Home(), "node", "node_modules", "oauth2-mock-server", "dist", "index.mjs"))
	rj, err := json.Marshal(roles)
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"HOST=127.0.0.1", "PORT=" + port, "MOCK_MODULE=" + mod, "ROLES=" + string(rj)}
	p := Start(t, "entra-mock", "127.0.0.1:"+port, env, "node", filepath.Join(sourceDir(), "testdata", "entra-mock.mjs"))
	return &OAuthMock{Process: p, URL: "http://127.0.0.1:" + port, Issuer: "http://localhost:" + port}
}

// SES is a running aws-ses-v2-local.
type SES struct {
	*Process
	URL string // SDK endpoint; GET URL+"/store" lists received mail
}

// SESEmulator starts aws-ses-v2-local on a free loopback port. env is added (e.g. AWS_SES_ACCOUNT).
func SESEmulator(t testing.TB, env ...string) *SES {
	t.Helper()
	port := strconv.Itoa(FreePort(t))
	bin := need(t, filepath.Join(Home(), "node", "node_modules", "aws-ses-v2-local", "dist", "cli.js"))
	p := Start(t, "ses", "127.0.0.1:"+port, env, "node", bin, "--host", "127.0.0.1", "--port", port)
	return &SES{Process: p, URL: "http://127.0.0.1:" + port}
}

// KMS is a running local-kms, seeded from testdata/kms-seed.yaml (alias/mailgate-secrets,
// alias/mailgate-rotated with two backing keys).
type KMS struct {
	*Process
	URL string
}

// LocalKMS starts local-kms on a free port with fresh state. It binds all interfaces (it has no host
// option); tests only ever connect to it over 127.0.0.1.
func LocalKMS(t testing.TB) *KMS {
	t.Helper()
	port := strconv.Itoa(FreePort(t))
	bin := need(t, filepath.Join(Home(), "bin", "local-kms"))
	env := []string{"PORT=" + port, "KMS_REGION=eu-west-2", "KMS_ACCOUNT_ID=111122223333",
		"KMS_SEED_PATH=" + filepath.Join(sourceDir(), "testdata", "kms-seed.yaml"), "KMS_DATA_PATH=" + t.TempDir()}
	p := Start(t, "local-kms", "127.0.0.1:"+port, env, bin)
	return &KMS{Process: p, URL: "http://127.0.0.1:" + port}
}

// Swaks runs swaks with args and returns its combined output and exit code (0 ok, 28 AUTH failed,
// 24 RCPT rejected, 25/26 DATA rejected). It never fails the test by itself.
func Swaks(t testing.TB, args ...string) (string, int) {
	t.Helper()
	bin, err := exec.LookPath("swaks")
	if err != nil {
		t.Fatalf("swaks is missing: run scripts/install-test-deps.sh")
	}
	cmd := exec.Command(bin, append([]string{"--timeout", "30"}, args...)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("swaks: %v", err)
	}
	return string(out), 0
}

// Python runs python3 with the script and args, failing the test on a non-zero exit.
func Python(t testing.TB, script string, args ...string) string {
	t.Helper()
	cmd := exec.Command("python3", append([]string{"-c", script}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, out)
	}
	return string(out)
}

// String renders a process for test logs.
func (p *Process) String() string {
	return fmt.Sprintf("%s pid=%d addr=%s", p.Name, p.Cmd.Process.Pid, p.Addr)
}
