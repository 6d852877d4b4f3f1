package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// relayPassword is the upstream's AUTH LOGIN password, known to mailgate only through a reference.
const relayPassword = "kms-e2e-relay-pw-5b27e0c9"

// dummyAWS are credentials local-kms accepts (it checks none); the SDK needs some to sign.
var dummyAWS = []string{"AWS_ACCESS_KEY_ID=AKIDMAILGATEE2E", "AWS_SECRET_ACCESS_KEY=mailgate-e2e-dummy-aws-secret", "AWS_REGION=eu-west-2"}

// passwordServer is a custom SMTP server with AUTH LOGIN and a password reference, plus the kms block.
func passwordServer(node *peertest.NodeSMTP, ref, kmsBlock string) string {
	host, port, _ := net.SplitHostPort(node.Addr)
	return fmt.Sprintf(`
kms:
%s
smtp_servers:
  - name: relay
    host: %s
    port: %s
    auth: login
    username: relay-user
    password: "%s"
    ca_file: %s
`, kmsBlock, host, port, ref, node.Cert.CertFile) + relayChannels("relay")
}

// relayWithPassword starts the daemon on cfg, relays one message with AUTH LOGIN to node and checks
// the upstream session; it returns the daemon's outputs for the secret search.
func relayWithPassword(t *testing.T, in *instance, node *peertest.NodeSMTP, subject string) map[string]string {
	t.Helper()
	in.start()
	outputs := map[string]string{"smtp replies": submitOne(t, in, subject)}
	waitFor(t, 20*time.Second, "the message at the AUTH LOGIN upstream", func() bool { return len(node.Accepted(t)) >= 1 })
	rec := node.Accepted(t)[len(node.Accepted(t))-1]
	if rec["auth"] != "LOGIN" || rec["user"] != "relay-user" || rec["tls"] != true || rec["subject"] != subject || fmt.Sprint(rec["to"]) != "["+submitRcpt+"]" {
		t.Fatalf("upstream session: %v", rec)
	}
	_, outputs["/metrics"] = adminGet(t, in, "/metrics")
	_, outputs["/readyz"] = adminGet(t, in, "/readyz")
	outputs["daemon log"] = in.logs()
	outputs["node log"] = nodeOutput(t, node)
	return outputs
}

// TestKMSPasswordReference: `secret encrypt --kms` against local-kms makes a kms: reference for the
// upstream password; the daemon decrypts it at start and relays with AUTH LOGIN to Node's
// smtp-server (PLAIN not offered, as on Exchange Online). The same configuration with KMS unreachable
// stops `serve` at once with an error naming the secret's path, while check-config (which decrypts
// nothing) still passes. The password appears in no output.
func TestKMSPasswordReference(t *testing.T) {
	kms := peertest.LocalKMS(t)
	node := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{User: "relay-user", Pass: relayPassword, NoPlain: true})
	outputs := map[string]string{}

	out, code := runBounded(t, 30*time.Second, dummyAWS, relayPassword+"\n",
		"secret", "encrypt", "--kms", "alias/mailgate-secrets", "--name", "relay-password", "--endpoint", kms.URL, "--region", "eu-west-2")
	outputs["secret encrypt"] = out
	ref := strings.TrimSpace(out)
	if code != 0 || !strings.HasPrefix(ref, "kms:") || strings.ContainsAny(ref, " \n") {
		t.Fatalf("secret encrypt --kms: exit %d\n%s", code, out)
	}

	in := newInstance(t, passwordServer(node, ref, fmt.Sprintf("  region: eu-west-2\n  endpoint: %s", kms.URL)))
	in.extraEnv = dummyAWS
	out, code = in.mailgate("check-config", in.config)
	outputs["check-config"] = out
	if code != 0 {
		t.Fatalf("check-config: exit %d\n%s", code, out)
	}
	for k, v := range relayWithPassword(t, in, node, "password from a kms: reference") {
		outputs[k] = v
	}
	in.proc.Stop()

	// KMS unreachable at start: a closed port (bound then released, so nothing listens there).
	closed := "http://127.0.0.1:" + strconv.Itoa(peertest.FreePort(t))
	down := newInstance(t, passwordServer(node, ref, "  region: eu-west-2\n  endpoint: "+closed))
	out, code = down.mailgate("check-config", down.config)
	outputs["check-config (kms down)"] = out
	if code != 0 || !strings.Contains(out, "ok") {
		t.Errorf("check-config with KMS unreachable: exit %d, want 0 (it decrypts nothing)\n%s", code, out)
	}
	start := time.Now()
	out, code = runBounded(t, 40*time.Second, dummyAWS, "", "serve", "--config", down.config)
	took := time.Since(start)
	outputs["serve (kms down)"] = out
	if code == -1 {
		t.Fatalf("serve with KMS unreachable was still running after 40 s:\n%s", out)
	}
	if code == 0 || !strings.Contains(out, "smtp_servers[0].password") || !strings.Contains(out, "unreachable") || !strings.Contains(out, closed) {
		t.Errorf("serve with KMS unreachable: exit %d, want non-zero naming smtp_servers[0].password, the endpoint and \"unreachable\"\n%s", code, out)
	}
	if took > 20*time.Second {
		t.Errorf("serve took %v to give up on an unreachable KMS", took)
	}
	if strings.Contains(out, "submission ") || strings.Contains(out, "admin on") {
		t.Errorf("serve started listeners before its secrets were decrypted:\n%s", out)
	}
	t.Logf("serve with KMS unreachable exited %d after %v: %s", code, took.Round(time.Millisecond), strings.TrimSpace(out))

	outputs["local-kms log"] = readLog(t, kms.Log)
	assertNoSecret(t, outputs, map[string][]string{"password": {relayPassword}, "AWS secret key": {"mailgate-e2e-dummy-aws-secret"}})
}

// TestLocalKeyringPasswordReference: the same relay with a local: reference made by
// `secret encrypt --local KEYRING` from a keyring made by `secret keygen`; a second keygen (rotation)
// leaves the old reference working.
func TestLocalKeyringPasswordReference(t *testing.T) {
	node := peertest.NodeSMTPServer(t, peertest.NodeSMTPOptions{User: "relay-user", Pass: relayPassword, NoPlain: true})
	keyring := filepath.Join(t.TempDir(), "keyring.json")
	outputs := map[string]string{}

	out, code := runBounded(t, 20*time.Second, nil, "", "secret", "keygen", keyring)
	outputs["secret keygen"] = out
	if code != 0 {
		t.Fatalf("secret keygen: exit %d\n%s", code, out)
	}
	out, code = runBounded(t, 20*time.Second, nil, relayPassword+"\n", "secret", "encrypt", "--local", keyring, "--name", "relay-password")
	outputs["secret encrypt"] = out
	ref := strings.TrimSpace(out)
	if code != 0 || !strings.HasPrefix(ref, "local:") || strings.ContainsAny(ref, " \n") {
		t.Fatalf("secret encrypt --local: exit %d\n%s", code, out)
	}
	// Rotate: new secrets would use the new key; the reference made with the old one still opens.
	out, code = runBounded(t, 20*time.Second, nil, "", "secret", "keygen", keyring)
	outputs["secret keygen (rotate)"] = out
	if code != 0 {
		t.Fatalf("secret keygen (rotate): exit %d\n%s", code, out)
	}
	kr, err := os.ReadFile(keyring)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(kr), relayPassword) {
		t.Fatal("the keyring holds the password")
	}

	in := newInstance(t, passwordServer(node, ref, "  keyring: "+keyring))
	out, code = in.mailgate("check-config", in.config)
	outputs["check-config"] = out
	if code != 0 {
		t.Fatalf("check-config: exit %d\n%s", code, out)
	}
	for k, v := range relayWithPassword(t, in, node, "password from a local: reference") {
		outputs[k] = v
	}
	assertNoSecret(t, outputs, map[string][]string{"password": {relayPassword}})
}

func readLog(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
