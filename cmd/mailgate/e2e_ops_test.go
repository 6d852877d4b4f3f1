package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay/peertest"
)

// Operator-facing behaviour of the running binary: SIGHUP reload, test-send, the queue commands
// through the admin listener, /readyz and /healthz, the SES events endpoint, check-config.

// httpGet returns the status and body of a GET on the admin listener.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	return peertest.HTTP(t, "GET", url, "", "")
}

// rewriteConfig replaces old with new in the instance's config file; old must occur.
func (in *instance) rewriteConfig(old, repl string) {
	in.t.Helper()
	b, err := os.ReadFile(in.config)
	if err != nil {
		in.t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		in.t.Fatalf("config lacks %q", old)
	}
	if err := os.WriteFile(in.config, []byte(strings.Replace(string(b), old, repl, 1)), 0o600); err != nil {
		in.t.Fatal(err)
	}
}

// sighup asks the daemon to reload and waits until the log shows the outcome (the n-th of them).
func (in *instance) sighup(n int) {
	in.t.Helper()
	if err := syscall.Kill(in.proc.Cmd.Process.Pid, syscall.SIGHUP); err != nil {
		in.t.Fatal(err)
	}
	waitFor(in.t, 15*time.Second, fmt.Sprintf("reload #%d in the log", n), func() bool {
		l := in.logs()
		return strings.Count(l, `msg="config reloaded"`)+strings.Count(l, `msg="config reload failed`) >= n
	})
}

var queuedAs = regexp.MustCompile(`250 2\.0\.0 queued as (\S+)`)

// queueID is the id from swaks' transcript of an accepted message.
func queueID(t *testing.T, swaksOut string) string {
	t.Helper()
	m := queuedAs.FindStringSubmatch(swaksOut)
	if m == nil {
		t.Fatalf("no queue id in:\n%s", swaksOut)
	}
	return m[1]
}

// TestSIGHUPReload: a reload with a new channel and a removed permission takes effect for the next
// submission; an invalid file is refused, logged with its problem, and the running rules stay.
func TestSIGHUPReload(t *testing.T) {
	sink := peertest.SMTPSink(t, "-a")
	in := newInstance(t, sinkChannels(sink.Addr))
	in.start()

	if out, code := in.swaks("--to", "c@example.net", "--h-From", "support@example.com"); code != 0 {
		t.Fatalf("Support before reload: exit %d\n%s", code, out)
	}
	if out, code := in.swaks("--to", "c@example.net", "--h-From", "billing@example.com"); code == 0 || !strings.Contains(out, "550 5.7.1") {
		t.Fatalf("Billing (no such channel yet): exit %d, want 550 5.7.1\n%s", code, out)
	}

	// New channel Billing, which alice's role may use; alice's role loses Support.
	in.rewriteConfig("channels:\n", `channels:
  - name: Billing
    from: billing@example.com
    display_name: Example Billing
    business_unit: BU
    transport: up
    outbound_flow: true
`)
	in.rewriteConfig("      Support: [reply, outbound]\n      Secure:", "      Billing: [reply, outbound]\n      Secure:")
	in.sighup(1)
	if !strings.Contains(in.logs(), `msg="config reloaded"`) {
		t.Fatalf("reload did not succeed:\n%s", in.logs())
	}
	if out, code := in.swaks("--to", "c@example.net", "--h-From", "support@example.com"); code == 0 || !strings.Contains(out, "550 5.7.1") {
		t.Errorf("Support after its permission was removed: exit %d, want 550 5.7.1\n%s", code, out)
	}
	out, code := in.swaks("--to", "c@example.net", "--h-From", "billing@example.com", "--h-Subject", "from the new channel")
	if code != 0 {
		t.Fatalf("Billing after reload: exit %d\n%s", code, out)
	}
	sink.WaitCount(t, 2, 15*time.Second)
	if m := sink.Messages(t); !strings.Contains(m[1], "Example Billing") || !strings.Contains(m[1], "from the new channel") {
		t.Errorf("upstream got:\n%s", m[1])
	}

	// An invalid file: the reload fails, says why with the path, and the running configuration stays.
	in.rewriteConfig("    transport: up\n    outbound_flow: true\n", "    transport: m365\n    outbound_flow: true\n")
	in.sighup(2)
	logs := in.logs()
	if !strings.Contains(logs, "config reload failed; the running configuration stays") || !strings.Contains(logs, `channels[0].transport: unknown server \"m365\"`) {
		t.Errorf("log does not say the reload failed and why:\n%s", logs)
	}
	if out, code := in.swaks("--to", "c@example.net", "--h-From", "billing@example.com", "--h-Subject", "still running"); code != 0 {
		t.Errorf("Billing after a failed reload: exit %d\n%s", code, out)
	}
	if out, code := in.swaks("--to", "c@example.net", "--h-From", "support@example.com"); code == 0 || !strings.Contains(out, "550 5.7.1") {
		t.Errorf("Support after a failed reload: exit %d, want still 550 5.7.1\n%s", code, out)
	}
	sink.WaitCount(t, 3, 15*time.Second)

	_, metrics := httpGet(t, "http://"+in.admin+"/metrics")
	for _, want := range []string{`mailgate_config_reloads_total{result="failure"} 1`, `mailgate_config_reloads_total{result="success"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// fakeSES answers SES v2's GetAccount and GetConfigurationSet (and SendEmail) in SES's JSON shapes; the
// TLS policy of each configuration set can be changed while it runs.
type fakeSES struct {
	*httptest.Server
	mu       sync.Mutex
	policies map[string]string // configuration set → TlsPolicy
}

func newFakeSES(t *testing.T, policies map[string]string) *fakeSES {
	f := &fakeSES{policies: policies}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/email/account", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"SendQuota":{"Max24HourSend":50000,"MaxSendRate":14,"SentLast24Hours":0},"SendingEnabled":true,"ProductionAccessEnabled":true,"EnforcementStatus":"HEALTHY"}`)
	})
	mux.HandleFunc("GET /v2/email/configuration-sets/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		f.mu.Lock()
		policy, ok := f.policies[name]
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.Header().Set("X-Amzn-ErrorType", "NotFoundException")
			w.WriteHeader(404)
			fmt.Fprintf(w, `{"message":"Configuration set <%s> does not exist."}`, name)
			return
		}
		fmt.Fprintf(w, `{"ConfigurationSetName":%q,"DeliveryOptions":{"TlsPolicy":%q}}`, name, policy)
	})
	mux.HandleFunc("POST /v2/email/outbound-emails", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"MessageId":"0100018c-fake"}`)
	})
	f.Server = httptest.NewServer(mux)
	t.Cleanup(f.Close)
	return f
}

func (f *fakeSES) setPolicy(set, policy string) {
	f.mu.Lock()
	f.policies[set] = policy
	f.mu.Unlock()
}

// sesForceTLSConfig has two Force TLS SES channels, each with its own configuration set.
func sesForceTLSConfig(endpoint string) string {
	return `
ses:
  region: eu-west-1
  endpoint: ` + endpoint + `
  event_topics: [arn:aws:sns:eu-west-1:123456789012:mailgate-events]
events:
  address: {{EVENTS}}
channels:
  - name: Secure
    from: secure@example.com
    business_unit: BU
    transport: ses
    outbound_flow: true
    force_tls: true
    ses_configuration_set: secure-set
  - name: Strict
    from: strict@example.com
    business_unit: BU
    transport: ses
    outbound_flow: true
    force_tls: true
    ses_configuration_set: strict-set
roles:
  - name: agent
    channels:
      Secure: [reply, outbound]
      Strict: [reply, outbound]
  - name: limited
    channels:
      Secure: [reply]
`
}

// TestReadyzAndHealthz: /readyz lists its checks and answers 200 when all pass; an SES Force TLS
// channel whose configuration set does not require TLS makes it 503 naming the channel and the set,
// and fixing the set plus SIGHUP makes it ready again. /healthz is 200 throughout.
func TestReadyzAndHealthz(t *testing.T) {
	t.Run("smtp", func(t *testing.T) {
		sink := peertest.SMTPSink(t, "-a")
		in := newInstance(t, sinkChannels(sink.Addr))
		in.start()
		code, body := httpGet(t, "http://"+in.admin+"/readyz")
		if code != 200 || !strings.Contains(body, "ok   spool") || !strings.Contains(body, "ok   store") || strings.Contains(body, "FAIL") {
			t.Errorf("/readyz = %d\n%s", code, body)
		}
		if code, body := httpGet(t, "http://"+in.admin+"/healthz"); code != 200 || strings.TrimSpace(body) != "ok" {
			t.Errorf("/healthz = %d %q", code, body)
		}
	})
	t.Run("ses tls policy", func(t *testing.T) {
		ses := newFakeSES(t, map[string]string{"secure-set": "OPTIONAL", "strict-set": "REQUIRE"})
		in := newInstance(t, sesForceTLSConfig(ses.URL))
		in.extraEnv = sesEnv
		in.start()
		code, body := httpGet(t, "http://"+in.admin+"/readyz")
		if code != http.StatusServiceUnavailable {
			t.Fatalf("/readyz = %d, want 503 (the Secure channel's set does not require TLS)\n%s", code, body)
		}
		if !strings.Contains(body, "FAIL ses:") || !strings.Contains(body, `ses channel "Secure"`) || !strings.Contains(body, `"secure-set"`) ||
			!strings.Contains(body, "REQUIRE") || !strings.Contains(body, "OPTIONAL") {
			t.Errorf("/readyz does not name the channel, its set and the policy:\n%s", body)
		}
		t.Logf("/readyz %d:\n%s", code, body)
		if strings.Contains(body, "Strict") || !strings.Contains(body, "ok   spool") || !strings.Contains(body, "ok   store") {
			t.Errorf("/readyz:\n%s", body)
		}
		if !strings.Contains(in.logs(), "ses problem") {
			t.Errorf("the TLS policy mismatch is not in the log:\n%s", in.logs())
		}
		if code, _ := httpGet(t, "http://"+in.admin+"/healthz"); code != 200 {
			t.Errorf("/healthz = %d while not ready; the process is alive", code)
		}
		// The operator fixes the configuration set and reloads: ready.
		ses.setPolicy("secure-set", "REQUIRE")
		in.sighup(1)
		code, body = httpGet(t, "http://"+in.admin+"/readyz")
		if code != 200 || strings.Contains(body, "FAIL") || !strings.Contains(body, "ok   ses") {
			t.Errorf("/readyz after fixing the set and SIGHUP = %d\n%s", code, body)
		}
	})
}

// TestSESEventsEndpoint: /ses/events is served on the events listener of a daemon with an ses: section,
// and not on the admin listener (404), nor anything of the admin listener on it; garbage, an unsigned
// notification, a forged one and one from a foreign topic are refused with 4xx and record nothing.
func TestSESEventsEndpoint(t *testing.T) {
	ses := newFakeSES(t, map[string]string{"secure-set": "REQUIRE", "strict-set": "REQUIRE"})
	in := newInstance(t, sesForceTLSConfig(ses.URL))
	in.extraEnv = sesEnv
	in.start()
	bounce := `{\"notificationType\":\"Bounce\",\"bounce\":{\"bounceType\":\"Permanent\",\"bounceSubType\":\"General\",\"bouncedRecipients\":[{\"emailAddress\":\"victim@example.net\",\"status\":\"5.1.1\",\"diagnosticCode\":\"smtp; 550 5.1.1 no such user\"}],\"timestamp\":\"2026-01-01T00:00:00.000Z\",\"feedbackId\":\"f1\"},\"mail\":{\"messageId\":\"m1\",\"source\":\"secure@example.com\",\"destination\":[\"victim@example.net\"],\"tags\":{\"ses:configuration-set\":[\"secure-set\"]}}}`
	notification := func(topic, extra string) string {
		return `{"Type":"Notification","MessageId":"0d3c2a8e-1111-2222-3333-444455556666","TopicArn":"` + topic +
			`","Message":"` + bounce + `","Timestamp":"2026-01-01T00:00:01.000Z"` + extra + `}`
	}
	const topic = "arn:aws:sns:eu-west-1:123456789012:mailgate-events"
	forged := `,"SignatureVersion":"1","Signature":"` + strings.Repeat("QUFB", 64) + `","SigningCertURL":"https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem"`
	cases := []struct {
		name, body string
		want       int
	}{
		{"garbage", "this is not an SNS message", 400},
		{"unsigned", notification(topic, ""), 400},
		{"forged signing host", notification(topic, forged), 403},
		{"foreign topic", notification("arn:aws:sns:eu-west-1:999999999999:someone-else", forged), 403},
	}
	c := &http.Client{Timeout: 10 * time.Second}
	for _, tc := range cases {
		req, _ := http.NewRequest("POST", "http://"+in.events+"/ses/events", strings.NewReader(tc.body))
		req.Header.Set("Content-Type", "text/plain; charset=UTF-8")
		req.Header.Set("X-Amz-Sns-Message-Type", "Notification")
		if tc.name == "garbage" {
			req.Header.Del("X-Amz-Sns-Message-Type")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("%s: %d %s", tc.name, resp.StatusCode, strings.TrimSpace(string(b)))
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d %q, want %d", tc.name, resp.StatusCode, strings.TrimSpace(string(b)), tc.want)
		}
	}
	if code, _ := httpGet(t, "http://"+in.events+"/ses/events"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /ses/events = %d, want 405 (the endpoint is POST only)", code)
	}
	resp, err := c.Post("http://"+in.admin+"/ses/events", "text/plain", strings.NewReader(notification(topic, forged)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("POST /ses/events on the admin listener = %d, want 404", resp.StatusCode)
	}
	for _, p := range []string{"/metrics", "/healthz", "/queue", "/debug/pprof/"} {
		if code, _ := httpGet(t, "http://"+in.events+p); code != http.StatusNotFound {
			t.Errorf("GET %s on the events listener = %d, want 404", p, code)
		}
	}
	out, code := in.mailgate("bounces", "list", "--config", in.config)
	if code != 0 || strings.Contains(out, "victim@example.net") || strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("bounces list after refused notifications: exit %d\n%s", code, out)
	}
	// The refused notification did not suppress the address either.
	if out, code := in.swaks("--to", "victim@example.net", "--h-From", "secure@example.com"); code != 0 {
		t.Errorf("submission to the address of a refused notification: exit %d\n%s", code, out)
	}
}

// TestTestSend: test-send prints the upstream's final reply and exits 0 (smtp-sink has the message),
// exits 1 saying plainly that TLS was required on a Force TLS channel to a server without STARTTLS, and
// prints SES's MessageId through an SES channel to the SES emulator.
func TestTestSend(t *testing.T) {
	t.Run("smtp-sink", func(t *testing.T) {
		sink := peertest.SMTPSink(t, "-a")
		in := newInstance(t, sinkChannels(sink.Addr))
		out, code := in.mailgate("test-send", "--config", in.config, "--channel", "Support", "--to", "probe@example.net")
		if code != 0 || !strings.Contains(out, "channel Support -> transport up") || !regexp.MustCompile(`accepted in \S+: 250 `).MatchString(out) {
			t.Fatalf("test-send: exit %d\n%s", code, out)
		}
		t.Logf("test-send:\n%s", out)
		sink.WaitCount(t, 1, 10*time.Second)
		m := sink.Messages(t)[0]
		for _, want := range []string{"X-Rcpt-Args: <probe@example.net>", "X-Mail-Args: <bounces@example.com>", "mailgate test-send", "Example Support"} {
			if !strings.Contains(m, want) {
				t.Errorf("sink message lacks %q:\n%s", want, m)
			}
		}
		// The Message-ID test-send printed is the one the upstream received.
		mid := regexp.MustCompile(`Message-ID: (<[^>]+>)`).FindStringSubmatch(out)
		if mid == nil || !strings.Contains(m, mid[1]) {
			t.Errorf("printed Message-ID %v not in the delivered message:\n%s", mid, m)
		}

		out, code = in.mailgate("test-send", "--config", in.config, "--channel", "Secure", "--to", "probe@example.net")
		if code != 1 || !strings.Contains(out, "TLS required") || !strings.Contains(out, "not sent") {
			t.Errorf("test-send on a Force TLS channel to smtp-sink: exit %d, want 1 saying TLS was required\n%s", code, out)
		}
		time.Sleep(300 * time.Millisecond)
		if n := sink.Count(); n != 1 {
			t.Errorf("sink has %d messages: the Force TLS test message was sent without TLS", n)
		}

		out, code = in.mailgate("test-send", "--config", in.config, "--channel", "Nope", "--to", "probe@example.net")
		if code != 1 || !strings.Contains(out, `no channel "Nope"`) {
			t.Errorf("unknown channel: exit %d\n%s", code, out)
		}
	})
	t.Run("ses-emulator", func(t *testing.T) {
		emu := peertest.SESEmulator(t)
		in := newInstance(t, sesConfig(emu.URL))
		in.extraEnv = sesEnv
		out, code := in.mailgate("test-send", "--config", in.config, "--channel", "Support", "--to", "probe@example.net")
		if code != 0 {
			t.Fatalf("test-send via SES: exit %d\n%s", code, out)
		}
		_, store := httpGet(t, emu.URL+"/store")
		id := regexp.MustCompile(`"messageId":"([^"]+)"`).FindStringSubmatch(store)
		if id == nil {
			t.Fatalf("SES emulator holds no message:\n%s", store)
		}
		if !strings.Contains(out, "accepted in ") || !strings.Contains(out, ": "+id[1]+"\n") {
			t.Errorf("test-send did not print SES's MessageId %s:\n%s", id[1], out)
		}
		if !strings.Contains(store, "mailgate test-send") {
			t.Errorf("emulator store lacks the test message:\n%s", store)
		}
	})
}

// TestQueueRetryDropThroughAdmin: with the upstream down, `queue list` through the admin listener shows
// each message with its pending recipient and the last error; `queue retry` delivers one at once once
// the upstream is back (the retry schedule alone would wait an hour); `queue drop` removes the other
// without a bounce; `log search title=` shows the delivery record of the ticket.
func TestQueueRetryDropThroughAdmin(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(peertest.FreePort(t))
	in := newInstance(t, sinkChannels(addr))
	in.rewriteConfig("retry_initial: 300ms\n  retry_max: 1s\n  max_lifetime: 1h", "retry_initial: 1h\n  retry_max: 2h\n  max_lifetime: 5d")
	in.start()

	out, code := in.swaks("--to", "keep@example.net", "--h-From", "support@example.com", "--h-Subject", "keep me",
		"--add-header", "X-Mailgate-Ticket: 880001")
	if code != 0 {
		t.Fatalf("swaks: %d\n%s", code, out)
	}
	keep := queueID(t, out)
	out, code = in.swaks("--to", "drop@example.net", "--h-From", "support@example.com", "--h-Subject", "drop me",
		"--add-header", "X-Mailgate-Ticket: 880002")
	if code != 0 {
		t.Fatalf("swaks: %d\n%s", code, out)
	}
	drop := queueID(t, out)

	list := func() string {
		out, code := in.mailgate("queue", "list", "--config", in.config)
		if code != 0 {
			t.Fatalf("queue list: exit %d\n%s", code, out)
		}
		return out
	}
	row := func(listing, id string) string {
		for _, l := range strings.Split(listing, "\n") {
			if strings.HasPrefix(l, id+" ") {
				return l
			}
		}
		return ""
	}
	waitFor(t, 15*time.Second, "both messages to have failed one attempt", func() bool {
		l := list()
		return regexp.MustCompile(`\s1\s+drop@example\.net\s`).MatchString(row(l, drop)) &&
			regexp.MustCompile(`\s1\s+keep@example\.net\s`).MatchString(row(l, keep))
	})
	l := list()
	t.Logf("queue list:\n%s", l)
	if !strings.HasPrefix(l, "QUEUE-ID") || !strings.Contains(row(l, keep), "Support") || !strings.Contains(row(l, keep), " up ") ||
		!strings.Contains(strings.ToLower(row(l, keep)), "connect") {
		t.Errorf("queue list:\n%s", l)
	}

	// --json: stable snake_case fields, one object per message.
	out, code = in.mailgate("queue", "list", "--config", in.config, "--json")
	var entries []map[string]any
	if err := json.Unmarshal([]byte(out), &entries); code != 0 || err != nil || len(entries) != 2 {
		t.Fatalf("queue list --json: exit %d, %v\n%s", code, err, out)
	}
	for _, e := range entries {
		rcpts, _ := e["recipients"].([]any)
		if e["queue_id"] == "" || e["channel"] != "Support" || e["attempts"] != float64(1) || len(rcpts) != 1 ||
			rcpts[0].(map[string]any)["status"] != "pending" {
			t.Errorf("queue list --json entry %v", e)
		}
	}

	out, code = in.mailgate("queue", "drop", drop, "--config", in.config)
	if code != 0 || !strings.Contains(out, "drop "+drop+": ok") {
		t.Fatalf("queue drop: exit %d\n%s", code, out)
	}
	if l := list(); row(l, drop) != "" || row(l, keep) == "" {
		t.Fatalf("after drop, queue list:\n%s", l)
	}
	if out, code := in.mailgate("queue", "drop", drop, "--config", in.config); code != 1 || !strings.Contains(out, drop) {
		t.Errorf("dropping it again: exit %d, want 1 naming it\n%s", code, out)
	}

	sink := startSinkAt(t, addr)
	time.Sleep(time.Second)
	if n := sink.Count(); n != 0 {
		t.Fatalf("the sink got %d messages before retry: the retry schedule was not in force", n)
	}
	out, code = in.mailgate("queue", "retry", keep, "--config", in.config)
	if code != 0 || !strings.Contains(out, "retry "+keep+": ok") {
		t.Fatalf("queue retry: exit %d\n%s", code, out)
	}
	sink.WaitCount(t, 1, 15*time.Second)
	waitFor(t, 10*time.Second, "the queue to be empty", func() bool { return row(list(), keep) == "" })
	time.Sleep(300 * time.Millisecond)
	msgs := sink.Messages(t)
	if len(msgs) != 1 || !strings.Contains(msgs[0], "keep me") || !strings.Contains(msgs[0], "X-Rcpt-Args: <keep@example.net>") {
		t.Fatalf("sink received:\n%s", strings.Join(msgs, "\n-----\n"))
	}

	waitFor(t, 10*time.Second, "the delivery record", func() bool {
		out, _ := in.mailgate("log", "search", "--config", in.config, "title=880001")
		return strings.Contains(out, "delivered")
	})
	out, _ = in.mailgate("log", "search", "--config", in.config, "title=880001")
	t.Logf("log search title=880001:\n%s", out)
	for _, want := range []string{keep, "880001", "Support", "alice", "keep@example.net", "250"} {
		if !strings.Contains(out, want) {
			t.Errorf("log search title=880001 lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, drop) {
		t.Errorf("log search title=880001 shows the other message:\n%s", out)
	}
	// One line per recipient, searchable by the recipient and by status.
	out, _ = in.mailgate("log", "search", "--config", in.config, "rcpt=KEEP@example.net", "status=delivered", "since=1h")
	if !regexp.MustCompile(keep+`.*keep@example\.net\s+delivered\s`).MatchString(out) || strings.Contains(out, drop) {
		t.Errorf("log search rcpt= status= since=:\n%s", out)
	}
	// The read-only endpoint agent applications ask "what happened to ticket N": token required.
	if code, _ := peertest.HTTP(t, "GET", "http://"+in.admin+"/deliveries?ticket=880001", "", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /deliveries without the token: %d, want 401", code)
	}
	if code, body := peertest.HTTP(t, "GET", "http://"+in.admin+"/deliveries", "", in.token); code != http.StatusBadRequest {
		t.Errorf("GET /deliveries without a selector: %d %s, want 400", code, body)
	}
	code, body := peertest.HTTP(t, "GET", "http://"+in.admin+"/deliveries?ticket=880001", "", in.token)
	var answered []map[string]any
	if err := json.Unmarshal([]byte(body), &answered); code != http.StatusOK || err != nil || len(answered) != 1 ||
		answered[0]["queue_id"] != keep || answered[0]["status"] != "delivered" {
		t.Errorf("GET /deliveries?ticket=880001: %d %v\n%s", code, err, body)
	}
	out, _ = in.mailgate("log", "search", "--config", in.config, "--json", "title=880001")
	var records []map[string]any
	if err := json.Unmarshal([]byte(out), &records); err != nil || len(records) != 1 || records[0]["queue_id"] != keep ||
		records[0]["ticket"] != "880001" || records[0]["status"] != "delivered" ||
		!strings.Contains(fmt.Sprint(records[0]["recipients"]), "address:keep@example.net") {
		t.Errorf("log search --json: %v\n%s", err, out)
	}
	out, _ = in.mailgate("log", "search", "--config", in.config, "title=880002")
	if !strings.Contains(out, drop) || !strings.Contains(out, "dropped") {
		t.Errorf("log search title=880002 does not show the drop:\n%s", out)
	}
	out, _ = in.mailgate("bounces", "list", "--config", in.config)
	if strings.Contains(out, "drop@example.net") {
		t.Errorf("a dropped message bounced:\n%s", out)
	}
}

// TestCheckConfigBrokenSet runs check-config on two of config/testdata/broken: exit 1, every problem
// printed with the file and its path.
func TestCheckConfigBrokenSet(t *testing.T) {
	for file, wants := range map[string][]string{
		"testdata/broken/oauth-missing-fields.yaml": {
			"smtp_servers[0].oauth.client_id: required",
			"smtp_servers[0].oauth.client_secret: required",
			`smtp_servers[0].oauth.mailbox: required: the mailbox address mail is sent as (got "")`,
			"3 problem(s)",
		},
		"testdata/broken/signature-user-twice.yaml": {
			`signatures[1].users[0]: user "alice" is in signatures "short" and "long"; a user can have only one signature`,
			"1 problem(s)",
		},
	} {
		// From the config package's directory, where the files' certificate paths (testdata/tls) lead.
		stdout, stderr, code := runIn(t, "../../config", "check-config", file)
		out := stdout + stderr
		if code != 1 {
			t.Errorf("%s: exit %d, want 1\n%s", file, code, out)
		}
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", file, w, out)
			}
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.HasPrefix(line, file+": ") {
				t.Errorf("%s: line without the file name: %q", file, line)
			}
		}
	}
}

// TestQueueOperatorCommands: show, hold/release, summary and the bulk actions by filter, against a
// running daemon whose upstream is down.
func TestQueueOperatorCommands(t *testing.T) {
	addr := "127.0.0.1:" + strconv.Itoa(peertest.FreePort(t))
	in := newInstance(t, sinkChannels(addr))
	in.rewriteConfig("retry_initial: 300ms\n  retry_max: 1s\n  max_lifetime: 1h", "retry_initial: 1h\n  retry_max: 2h\n  max_lifetime: 5d")
	in.start()
	var ids []string
	for _, rcpt := range []string{"one@example.net", "two@example.net", "three@example.org"} {
		out, code := in.swaks("--to", rcpt, "--h-From", "support@example.com", "--h-Subject", "about "+rcpt)
		if code != 0 {
			t.Fatalf("swaks: %d\n%s", code, out)
		}
		ids = append(ids, queueID(t, out))
	}
	q := func(args ...string) (string, int) {
		return in.mailgate(append([]string{"queue"}, append(args, "--config", in.config)...)...)
	}
	waitFor(t, 15*time.Second, "three deferred messages", func() bool {
		out, _ := q("list", "--json")
		return strings.Count(out, `"attempts": 1`) == 3
	})

	out, code := q("summary")
	if code != 0 || !regexp.MustCompile(`(?m)^\s*TOTAL\s+3\s+3\s`).MatchString(out) || !regexp.MustCompile(`(?m)^\s*up\s+3\s`).MatchString(out) {
		t.Errorf("queue summary: exit %d\n%s", code, out)
	}
	out, code = q("show", ids[2])
	for _, want := range []string{"queue id:     " + ids[2], "three@example.org — pending", "Subject: about three@example.org", "From: "} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("queue show lacks %q: exit %d\n%s", want, code, out)
		}
	}
	if _, code := q("drop"); code != 2 {
		t.Errorf("queue drop without ids or filters: exit %d, want 2 (it must not empty the queue)", code)
	}
	if out, code := q("hold", "--rcpt", "THREE@example.org"); code != 0 || !strings.Contains(out, "hold "+ids[2]+": ok") || strings.Contains(out, ids[0]) {
		t.Fatalf("queue hold --rcpt: exit %d\n%s", code, out)
	}
	if out, code := q("list"); !regexp.MustCompile(ids[2] + `.*\sheld\s`).MatchString(out) {
		t.Errorf("held message not shown as held: exit %d\n%s", code, out)
	}
	if out, code := q("retry", ids[2]); code != 1 || !strings.Contains(out, "release it first") {
		t.Errorf("retry of a held message: exit %d\n%s", code, out)
	}
	if out, code := q("release", ids[2]); code != 0 || !strings.Contains(out, "release "+ids[2]+": ok") {
		t.Errorf("release: exit %d\n%s", code, out)
	}
	if out, code := q("drop", "--channel", "Support", "--older-than", "0s"); code != 0 || strings.Count(out, ": ok") != 3 {
		t.Errorf("bulk drop: exit %d\n%s", code, out)
	}
	if out, _ := q("list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("queue after the bulk drop:\n%s", out)
	}
}
