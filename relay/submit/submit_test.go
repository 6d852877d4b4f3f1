package submit

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/mailgate/mailgate/auth"
	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/metrics"
)

func base64Std(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

var queuedRE = regexp.MustCompile(`250 2\.0\.0 queued as (Q\d+)`)

// swaks submits over STARTTLS with AUTH LOGIN and AUTH PLAIN; the envelope sender is the channel's, not
// the client's.
func TestSwaksStartTLSAuth(t *testing.T) {
	h := startServer(t, nil, nil)
	for i, mech := range []string{"LOGIN", "PLAIN"} {
		out, code := h.swaks(t, "submission", "--tls", "--auth", mech, "--auth-user", "demo", "--auth-password", "demo",
			"--from", "attacker@evil.test", "--header", "From: Example Support <support@example.com>",
			"--header", "Subject: swaks "+mech, "--body", "hello from "+mech)
		if code != 0 {
			t.Fatalf("%s: swaks exit %d\n%s", mech, code, out)
		}
		if !strings.Contains(out, "235 2.0.0") {
			t.Fatalf("%s: no AUTH success in\n%s", mech, out)
		}
		m := queuedRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("%s: no queue id in\n%s", mech, out)
		}
		msgs := h.spool.Messages()
		if len(msgs) != i+1 {
			t.Fatalf("%s: %d messages in spool, want %d", mech, len(msgs), i+1)
		}
		got := msgs[i]
		if got.ID != m[1] {
			t.Errorf("%s: reply says %s, spool has %s", mech, m[1], got.ID)
		}
		want := relay.Envelope{Channel: "Support", Transport: "outbox", MailFrom: "bounces@example.com",
			Recipients: []string{"customer@example.net"}, Principal: "demo"}
		e := got.Env
		if e.Channel != want.Channel || e.Transport != want.Transport || e.MailFrom != want.MailFrom ||
			strings.Join(e.Recipients, ",") != "customer@example.net" || e.Principal != "demo" || e.ForceTLS ||
			e.MessageID == "" || e.Received.IsZero() {
			t.Errorf("%s: envelope %+v", mech, e)
		}
		if !strings.Contains(got.Body, "Subject: swaks "+mech+"\r\n") || !strings.Contains(got.Body, "hello from "+mech) {
			t.Errorf("%s: body\n%s", mech, got.Body)
		}
		if v := testutil.ToFloat64(h.metrics.AuthAttempts.WithLabelValues(mech, "success")); v != 1 {
			t.Errorf("%s: auth success metric %v", mech, v)
		}
	}
	if v := testutil.ToFloat64(h.metrics.MessagesAccepted.WithLabelValues("Support")); v != 2 {
		t.Errorf("accepted metric %v, want 2", v)
	}
	// Every accepted message's composition is timed and sized.
	if n := testutil.CollectAndCount(h.metrics.ComposeDuration); n != 1 {
		t.Errorf("compose duration series %d", n)
	}
	if c := histogramCount(t, h.metrics.ComposedMessageBytes); c != 2 {
		t.Errorf("composed message sizes observed %d, want 2", c)
	}
	if left := filesIn(t, h.tmp); len(left) != 0 {
		t.Errorf("raw DATA files left behind: %v", left)
	}
	logs := h.logs.String()
	if !strings.Contains(logs, "msg=accepted") || !strings.Contains(logs, "queue_id=Q000001") {
		t.Errorf("no accepted event in log:\n%s", logs)
	}
	if strings.Contains(logs, "demo\x00") || strings.Contains(logs, base64Std("demo")) || strings.Contains(logs, "password") {
		t.Errorf("AUTH data in the log:\n%s", logs)
	}
}

func TestSwaksImplicitTLS(t *testing.T) {
	h := startServer(t, nil, nil)
	out, code := h.swaks(t, "submissions", "--tlsc", "--auth", "PLAIN", "--auth-user", "demo", "--auth-password", "demo",
		"--from", "support@example.com", "--header", "In-Reply-To: <case-1@example.net>")
	if code != 0 || !queuedRE.MatchString(out) {
		t.Fatalf("swaks exit %d\n%s", code, out)
	}
	if !strings.Contains(out, "TLS started") && !strings.Contains(out, "TLS") {
		t.Errorf("no TLS in swaks transcript\n%s", out)
	}
	// Plain text on the implicit-TLS port gets nowhere.
	out, code = h.swaks(t, "submissions", "--auth", "PLAIN", "--auth-user", "demo", "--auth-password", "demo",
		"--from", "support@example.com", "--timeout", "3")
	if code == 0 {
		t.Fatalf("plain text accepted on implicit-TLS port\n%s", out)
	}
	if n := len(h.spool.Messages()); n != 1 {
		t.Fatalf("%d messages, want 1", n)
	}
}

// Every open-relay refusal, with its exact code, through the real swaks.
func TestSwaksRefusals(t *testing.T) {
	h := startServer(t, nil, nil)
	login := func(user, pass string) []string {
		return []string{"--tls", "--auth", "LOGIN", "--auth-user", user, "--auth-password", pass}
	}
	reply := []string{"--header", "In-Reply-To: <thread-1@example.net>"}
	big := filepath.Join(t.TempDir(), "big.txt")
	if err := os.WriteFile(big, []byte(strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 1200)), 0o600); err != nil {
		t.Fatal(err)
	}
	medium := filepath.Join(t.TempDir(), "medium.txt")
	if err := os.WriteFile(medium, []byte(strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 100)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		listener string
		args     []string
		want     string // reply in the transcript
		exit     int
		stage    string
		reason   string
	}{
		{"no auth", "submission", append([]string{"--tls", "--from", "support@example.com"}, reply...),
			"* 530 5.7.0 Authentication required", 23, "mail", "auth_required"},
		{"auth before TLS", "submission", append([]string{"--auth", "PLAIN", "--auth-user", "demo", "--auth-password", "demo",
			"--from", "support@example.com"}, reply...), "Host did not advertise authentication", 28, "", ""},
		{"wrong password", "submission", append(login("demo", "wrong"), "--from", "support@example.com"),
			"* 535 5.7.8", 28, "", ""},
		{"unknown user", "submission", append(login("mallory", "demo"), "--from", "support@example.com"),
			"* 535 5.7.8", 28, "", ""},
		{"channel without permission", "submission", append(append(login("demo", "demo"), "--from", "billing@example.com"), reply...),
			"* 550 5.7.1 You may not send as billing@example.com", 26, "data", "from_not_permitted"},
		{"unknown channel", "submission", append(append(login("demo", "demo"), "--from", "someone@example.org"), reply...),
			"* 550 5.7.1 You may not send as someone@example.org", 26, "data", "from_not_permitted"},
		{"outbound off on channel", "submission", append(login("demo", "demo"), "--from", "sales@example.com"),
			"* 550 5.7.1 New outbound email is not enabled on this channel", 26, "data", "outbound_inactive"},
		{"outbound not in role", "submission", append(login("replier", "replier"), "--from", "support@example.com"),
			"* 550 5.7.1 You may not send new outbound email from support@example.com", 26, "data", "outbound_not_permitted"},
		{"suppressed recipient", "submission", append(append(login("demo", "demo"), "--from", "support@example.com",
			"--to", "bounced@example.net"), reply...),
			"* 550 5.1.1 Recipient is on the suppression list: 550 5.1.1 mailbox unavailable", 24, "rcpt", "suppressed"},
		{"bad recipient syntax", "submission", append(append(login("demo", "demo"), "--from", "support@example.com",
			"--to", "nobody@localhost"), reply...), "* 501 5.1.3", 24, "rcpt", "bad_address"},
		{"store failure is generic", "submission", append(append(login("demo", "demo"), "--from", "support@example.com",
			"--to", "broken@example.net"), reply...), "* 451 4.3.0 internal error (session ", 24, "rcpt", "internal"},
		{"raw size", "submission", append(append(login("demo", "demo"), "--from", "support@example.com", "--body", "@"+big), reply...),
			"* 552 5.3.4", 26, "data", "size"},
		{"composed size over transport limit", "submission", append(append(login("demo", "demo"), "--from", "small@example.com", "--body", "@"+medium), reply...),
			"* 552 5.3.4 Message too big for this channel's transport", 26, "data", "size"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(h.spool.Messages())
			var rejected float64
			if tc.stage != "" {
				rejected = testutil.ToFloat64(h.metrics.MessagesRejected.WithLabelValues(tc.stage, tc.reason))
			}
			// swaks' --to default is customer@example.net; a later --to overrides it.
			out, code := h.swaks(t, tc.listener, tc.args...)
			if code != tc.exit || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d (want %d), want %q in\n%s", code, tc.exit, tc.want, out)
			}
			if strings.Contains(out, "database is locked") || strings.Contains(out, "/var/lib") {
				t.Fatalf("internal error text reached the client\n%s", out)
			}
			if n := len(h.spool.Messages()); n != before {
				t.Fatalf("spool grew from %d to %d", before, n)
			}
			if tc.stage != "" {
				if v := testutil.ToFloat64(h.metrics.MessagesRejected.WithLabelValues(tc.stage, tc.reason)); v != rejected+1 {
					t.Errorf("rejected{%s,%s} = %v, want %v", tc.stage, tc.reason, v, rejected+1)
				}
			}
		})
	}
	// Drafts refused after composition were aborted, not left in the spool.
	if a := h.spool.Aborted(); a != 3 {
		t.Errorf("%d drafts aborted, want 3 (two outbound refusals, one composed size)", a)
	}
	// The internal cause is in the log, not on the wire.
	if !strings.Contains(h.logs.String(), "database is locked") {
		t.Error("internal cause not logged")
	}
	if left := filesIn(t, h.tmp); len(left) != 0 {
		t.Errorf("raw DATA files left behind: %v", left)
	}

	// The same senders succeed where policy allows: a reply on the outbound-off channel, and a reply by
	// the reply-only agent.
	for _, args := range [][]string{
		append(append(login("demo", "demo"), "--from", "sales@example.com"), reply...),
		append(append(login("replier", "replier"), "--from", "support@example.com"), reply...),
		append(login("demo", "demo"), "--from", "support@example.com", "--header", "X-Mailgate-Ticket: 123456"),
	} {
		if out, code := h.swaks(t, "submission", args...); code != 0 {
			t.Fatalf("exit %d\n%s", code, out)
		}
	}
	msgs := h.spool.Messages()
	if len(msgs) != 3 || msgs[0].Env.Channel != "Sales" || msgs[0].Env.MailFrom != "Sales@Example.com" || !msgs[0].Env.ForceTLS ||
		msgs[1].Env.Principal != "replier" || msgs[2].Env.Ticket != "123456" {
		t.Fatalf("accepted messages %+v", msgs)
	}
}

// On a STARTTLS listener that is not the development one, AUTH is neither offered nor accepted in
// plain text; after STARTTLS it is.
func TestNoAuthBeforeTLS(t *testing.T) {
	h := startServer(t, nil, nil)
	rc := dialRaw(t, addrOf(t, h, "submission"))
	ehlo := rc.expect("EHLO raw.test", "250 ")
	if strings.Contains(ehlo, "AUTH") || !strings.Contains(ehlo, "STARTTLS") {
		t.Fatalf("EHLO before TLS: %q", ehlo)
	}
	// RFC 4954 §4 / RFC 5248: go-smtp answers 523 5.7.10 (encryption needed).
	rc.expect("AUTH PLAIN "+base64Std("\x00demo\x00demo"), "523 5.7.10")
	rc.expect("MAIL FROM:<support@example.com>", "530 5.7.0")

	// A PLAIN authorization identity other than the login is refused even with the right password, and
	// leaves the session unauthenticated.
	dev0 := dialRaw(t, addrOf(t, h, "dev"))
	dev0.expect("EHLO raw.test", "250 ")
	dev0.expect("AUTH PLAIN "+base64Std("replier\x00demo\x00demo"), "535 5.7.8")
	dev0.expect("MAIL FROM:<support@example.com>", "530 5.7.0")
	// Malformed PLAIN data is a clean 501, not library text.
	dev0.expect("AUTH PLAIN "+base64Std("no-nuls-here"), "501 5.5.2")

	// The development listener offers AUTH in plain text.
	dev := dialRaw(t, addrOf(t, h, "dev"))
	if ehlo := dev.expect("EHLO raw.test", "250 "); !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
		t.Fatalf("dev EHLO: %q", ehlo)
	}
}

// After N failures from one address, AUTH is refused with 454 4.7.0 even with the right password.
func TestAuthRateLimit(t *testing.T) {
	h := startServer(t, func(o *Options) { o.AuthFailures = 3; o.AuthWindow = time.Hour }, nil)
	args := func(pass string) []string {
		return []string{"--tls", "--auth", "PLAIN", "--auth-user", "demo", "--auth-password", pass,
			"--from", "support@example.com", "--header", "In-Reply-To: <x@example.net>"}
	}
	for i := 0; i < 3; i++ {
		if out, code := h.swaks(t, "submission", args("wrong")...); code != 28 || !strings.Contains(out, "535 5.7.8") {
			t.Fatalf("attempt %d: exit %d\n%s", i, code, out)
		}
	}
	out, code := h.swaks(t, "submission", args("demo")...)
	if code != 28 || !strings.Contains(out, "* 454 4.7.0 Too many failed authentication attempts") {
		t.Fatalf("after the limit: exit %d\n%s", code, out)
	}
	// LOGIN over the implicit-TLS listener is limited too: the count is per client address and login.
	out, code = h.swaks(t, "submissions", "--tlsc", "--auth", "LOGIN", "--auth-user", "demo", "--auth-password", "demo",
		"--from", "support@example.com")
	if code != 28 || !strings.Contains(out, "454 4.7.0") {
		t.Fatalf("other listener: exit %d\n%s", code, out)
	}
	if v := testutil.ToFloat64(h.metrics.AuthAttempts.WithLabelValues("PLAIN", "failure")); v != 3 {
		t.Errorf("failures %v", v)
	}
	if v := testutil.ToFloat64(h.metrics.AuthAttempts.WithLabelValues("PLAIN", "rate_limited")); v != 1 {
		t.Errorf("rate limited %v", v)
	}
	if len(h.spool.Messages()) != 0 {
		t.Fatal("message accepted")
	}
}

// A trusted network's service principal sends without AUTH, within its role.
func TestTrustedNetwork(t *testing.T) {
	h := startServer(t, nil, nil, auth.TrustedNetwork{Prefix: loopback, Principal: "crm", Role: "app"})
	out, code := h.swaks(t, "submission", "--from", "support@example.com")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	msgs := h.spool.Messages()
	if len(msgs) != 1 || msgs[0].Env.Principal != "crm" {
		t.Fatalf("messages %+v", msgs)
	}
	out, code = h.swaks(t, "submission", "--from", "billing@example.com", "--header", "In-Reply-To: <a@example.net>")
	if code != 26 || !strings.Contains(out, "550 5.7.1") {
		t.Fatalf("exit %d\n%s", code, out)
	}
}

// SMTP smuggling: each probe hides a second transaction behind a line ending that some server might take
// for the end of data. mailgate must answer the whole thing once (refusing the bare CR/LF) and stay in
// sync: the next command gets its own reply, and no message is queued.
func TestSmugglingProbes(t *testing.T) {
	h := startServer(t, nil, nil)
	const head = "From: support@example.com\r\nTo: customer@example.net\r\nIn-Reply-To: <t@example.net>\r\nSubject: probe\r\n\r\nfirst message\r\n"
	const smuggled = "MAIL FROM:<support@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n" +
		"From: support@example.com\r\nIn-Reply-To: <t@example.net>\r\nSubject: smuggled\r\n\r\nsmuggled\r\n"
	for _, probe := range []struct{ name, end string }{
		{`\n.\r\n`, "\n.\r\n"},
		{`\r\n.\n`, "\r\n.\n"},
		{`\r.\r\n`, "\r.\r\n"},
		{`\n.\n`, "\n.\n"},
		{"bare LF in a body line", "a line\nwith a bare LF\r\n"},
		{"bare CR in a body line", "a line\rwith a bare CR\r\n"},
	} {
		t.Run(probe.name, func(t *testing.T) {
			rc := dialRaw(t, addrOf(t, h, "dev"))
			rc.authPlain("demo", "demo")
			rc.expect("MAIL FROM:<x@example.org>", "250 ")
			rc.expect("RCPT TO:<customer@example.net>", "250 ")
			rc.expect("DATA", "354 ")
			rc.send(head + probe.end + smuggled + ".\r\n")
			if got := rc.reply(); !strings.HasPrefix(got, "554 5.6.0 ") {
				t.Fatalf("reply %q, want 554 5.6.0", got)
			}
			// In sync: the next reply belongs to the next command.
			rc.expect("NOOP", "250 2.0.0 I have successfully done nothing")
			rc.expect("QUIT", "221 ")
			if n := len(h.spool.Messages()); n != 0 {
				t.Fatalf("%d messages queued", n)
			}
		})
	}

	// "\r\n.\r" + text: see TestHostileDotCR.
	base := len(h.spool.Messages())

	// BDAT passes raw bytes: the guard covers it, and the session stays usable afterwards.
	t.Run("BDAT", func(t *testing.T) {
		rc := dialRaw(t, addrOf(t, h, "dev"))
		rc.authPlain("demo", "demo")
		rc.expect("MAIL FROM:<x@example.org>", "250 ")
		rc.expect("RCPT TO:<customer@example.net>", "250 ")
		chunk1 := head + "line one\n"
		rc.send("BDAT " + strconv.Itoa(len(chunk1)) + "\r\n" + chunk1)
		if got := rc.reply(); !strings.HasPrefix(got, "250 ") {
			t.Fatalf("first chunk: %q", got)
		}
		chunk2 := "\r\n.\r\n" + smuggled
		rc.send("BDAT " + strconv.Itoa(len(chunk2)) + " LAST\r\n" + chunk2)
		if got := rc.reply(); !strings.HasPrefix(got, "554 5.6.0 ") {
			t.Fatalf("last chunk: %q", got)
		}
		// A clean BDAT message on the same connection is accepted: exactly one message.
		rc.expect("MAIL FROM:<x@example.org>", "250 ")
		rc.expect("RCPT TO:<customer@example.net>", "250 ")
		clean := head + "clean\r\n"
		rc.send("BDAT " + strconv.Itoa(len(clean)) + " LAST\r\n" + clean)
		if got := rc.reply(); !queuedRE.MatchString(got) {
			t.Fatalf("clean BDAT: %q", got)
		}
		rc.expect("QUIT", "221 ")
		msgs := h.spool.Messages()
		if len(msgs) != base+1 || strings.Contains(msgs[base].Body, "smuggled") {
			t.Fatalf("messages %+v", msgs[base:])
		}
	})

	// Control: the same text with proper CRLF and a dot-stuffed line is one message, unchanged.
	t.Run("clean DATA", func(t *testing.T) {
		before := len(h.spool.Messages())
		rc := dialRaw(t, addrOf(t, h, "dev"))
		rc.authPlain("demo", "demo")
		rc.expect("MAIL FROM:<x@example.org>", "250 ")
		rc.expect("RCPT TO:<customer@example.net>", "250 ")
		rc.expect("DATA", "354 ")
		rc.send(head + "..leading dot\r\n.\r\n")
		if got := rc.reply(); !queuedRE.MatchString(got) {
			t.Fatalf("reply %q", got)
		}
		msgs := h.spool.Messages()
		if len(msgs) != before+1 || !strings.HasSuffix(msgs[len(msgs)-1].Body, "first message\r\n.leading dot\r\n") {
			t.Fatalf("messages %+v", msgs)
		}
	})
	if v := testutil.ToFloat64(h.metrics.MessagesRejected.WithLabelValues("data", "bare_line_ending")); v < 6 {
		t.Errorf("bare_line_ending rejections %v, want at least 6", v)
	}
}

// A slow upload is fine as long as every read makes progress within the idle timeout (go-smtp's own
// ReadTimeout would cut it); a stalled client is disconnected.
func TestDeadlinesRefreshedDuringData(t *testing.T) {
	h := startServer(t, func(o *Options) { o.IdleTimeout = 700 * time.Millisecond }, nil)
	rc := dialRaw(t, addrOf(t, h, "dev"))
	rc.authPlain("demo", "demo")
	rc.expect("MAIL FROM:<x@example.org>", "250 ")
	rc.expect("RCPT TO:<customer@example.net>", "250 ")
	rc.expect("DATA", "354 ")
	rc.send("From: support@example.com\r\nIn-Reply-To: <t@example.net>\r\n\r\n")
	start := time.Now()
	for i := 0; i < 8; i++ { // 8 × 300 ms = 2.4 s, well past the 0.7 s idle timeout
		time.Sleep(300 * time.Millisecond)
		rc.send("slow line\r\n")
	}
	rc.send(".\r\n")
	if got := rc.reply(); !queuedRE.MatchString(got) {
		t.Fatalf("slow upload: %q after %v", got, time.Since(start))
	}

	idle := dialRaw(t, addrOf(t, h, "dev"))
	idle.expect("EHLO raw.test", "250 ")
	if got := idle.reply(); !strings.HasPrefix(got, "421 4.4.2") {
		t.Fatalf("idle client got %q", got)
	}
}

func TestConnectionLimit(t *testing.T) {
	h := startServer(t, func(o *Options) { o.MaxConnections = 2 }, nil)
	a := dialRaw(t, addrOf(t, h, "submission"))
	dialRaw(t, addrOf(t, h, "dev"))
	b := overTheLimit(t, addrOf(t, h, "submission"))
	if !strings.HasPrefix(string(b), "421 4.3.2 ") {
		t.Fatalf("over the limit: %q", b)
	}
	a.expect("QUIT", "221 ")
	// The slot is freed when the connection closes.
	waitGreeting(t, addrOf(t, h, "submission"))
	if v := testutil.ToFloat64(h.metrics.MessagesRejected.WithLabelValues("connect", "connection_limit")); v < 1 {
		t.Errorf("connection_limit rejections %v", v)
	}
	if v := testutil.ToFloat64(h.metrics.Sessions.WithLabelValues("submission")); v < 2 {
		t.Errorf("sessions %v", v)
	}
}

// Errors that are not *relay.Error never reach the client as text.
func TestInternalErrorsAreGeneric(t *testing.T) {
	var mode string
	composer := composerFunc(func(ctx context.Context, src io.Reader, dst io.Writer, sub *Submission) (*Composed, error) {
		switch mode {
		case "plain":
			return nil, errors.New("template /etc/mailgate/secret-template.html: permission denied")
		case "deadline":
			return nil, context.DeadlineExceeded
		case "policy":
			return nil, relay.Errorf(550, relay.CodePolicy, "attachment", "Attachment type .exe is not accepted")
		case "wrapped":
			return nil, relay.Wrap(errors.New("disk /var/spool"), 452, "4.3.1", "storage", "Insufficient system storage")
		}
		return passThrough{}.Compose(ctx, src, dst, sub)
	})
	h := startServer(t, nil, composer)
	for _, tc := range []struct{ mode, want string }{
		{"plain", "451 4.3.0 internal error (session "},
		{"deadline", "451 4.4.2 "},
		{"policy", "550 5.7.1 Attachment type .exe is not accepted"},
		{"wrapped", "452 4.3.1 Insufficient system storage"},
	} {
		mode = tc.mode
		rc := dialRaw(t, addrOf(t, h, "dev"))
		rc.authPlain("demo", "demo")
		rc.expect("MAIL FROM:<x@example.org>", "250 ")
		rc.expect("RCPT TO:<customer@example.net>", "250 ")
		rc.expect("DATA", "354 ")
		rc.send("From: support@example.com\r\nIn-Reply-To: <t@example.net>\r\n\r\nbody\r\n.\r\n")
		got := rc.reply()
		if !strings.HasPrefix(got, tc.want) || strings.Contains(got, "/etc/") || strings.Contains(got, "/var/") {
			t.Errorf("%s: reply %q, want %q", tc.mode, got, tc.want)
		}
		if tc.mode == "plain" {
			id := strings.TrimSuffix(strings.TrimPrefix(got, "451 4.3.0 internal error (session "), ")")
			if !strings.Contains(h.logs.String(), "session="+id) || !strings.Contains(h.logs.String(), "secret-template.html") {
				t.Errorf("cause not logged with session %s:\n%s", id, h.logs.String())
			}
		}
	}
	if h.spool.Aborted() != 4 || len(h.spool.Messages()) != 0 {
		t.Fatalf("aborted %d, committed %d", h.spool.Aborted(), len(h.spool.Messages()))
	}

	// A spool that cannot create or commit is internal too.
	mode = ""
	h.spool.commitErr = errors.New("fsync /spool/x: input/output error")
	rc := dialRaw(t, addrOf(t, h, "dev"))
	rc.authPlain("demo", "demo")
	rc.expect("MAIL FROM:<x@example.org>", "250 ")
	rc.expect("RCPT TO:<customer@example.net>", "250 ")
	rc.expect("DATA", "354 ")
	rc.send("From: support@example.com\r\nIn-Reply-To: <t@example.net>\r\n\r\nbody\r\n.\r\n")
	if got := rc.reply(); !strings.HasPrefix(got, "451 4.3.0 internal error (session ") {
		t.Fatalf("commit failure: %q", got)
	}
}

// A reload takes effect on connections opened before it: a removed user cannot start another
// transaction, and a withdrawn permission applies at the next DATA.
func TestSetRules(t *testing.T) {
	h := startServer(t, nil, nil)
	rc := dialRaw(t, addrOf(t, h, "dev"))
	rc.authPlain("demo", "demo")
	send := func() string {
		rc.expect("MAIL FROM:<x@example.org>", "250 ")
		rc.expect("RCPT TO:<customer@example.net>", "250 ")
		rc.expect("DATA", "354 ")
		rc.send("From: support@example.com\r\n\r\nnew outbound\r\n.\r\n")
		return rc.reply()
	}
	if got := send(); !queuedRE.MatchString(got) {
		t.Fatalf("before reload: %q", got)
	}
	// Support's outbound flow switched off.
	chans := append([]Channel(nil), testChannels...)
	chans[0].OutboundActive = false
	r, err := NewRules(testDirectory(t), chans, passThrough{})
	if err != nil {
		t.Fatal(err)
	}
	h.srv.SetRules(r)
	if got := send(); !strings.HasPrefix(got, "550 5.7.1 New outbound") {
		t.Fatalf("after reload: %q", got)
	}
	// The user removed.
	d, err := auth.NewDirectory(nil, []auth.Role{{Name: "agent"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err = NewRules(d, testChannels, passThrough{})
	if err != nil {
		t.Fatal(err)
	}
	h.srv.SetRules(r)
	rc.expect("MAIL FROM:<x@example.org>", "530 5.7.0")
}

func TestRecipientLimitAndDuplicates(t *testing.T) {
	h := startServer(t, nil, nil) // MaxRecipients 5
	rc := dialRaw(t, addrOf(t, h, "dev"))
	rc.authPlain("demo", "demo")
	rc.expect("MAIL FROM:<x@example.org>", "250 ")
	rc.expect("RCPT TO:<a@example.net>", "250 ")
	rc.expect("RCPT TO:<A@example.net>", "250 ") // duplicate: accepted, delivered once
	for _, r := range []string{"b", "c", "d", "e"} {
		rc.expect("RCPT TO:<"+r+"@example.net>", "250 ")
	}
	rc.expect("RCPT TO:<f@example.net>", "452 4.5.3")
	rc.expect("DATA", "354 ")
	rc.send("From: support@example.com\r\nIn-Reply-To: <t@example.net>\r\n\r\nbody\r\n.\r\n")
	if got := rc.reply(); !queuedRE.MatchString(got) {
		t.Fatalf("%q", got)
	}
	if got := h.spool.Messages()[0].Env.Recipients; strings.Join(got, ",") != "a@example.net,b@example.net,c@example.net,d@example.net,e@example.net" {
		t.Fatalf("recipients %v", got)
	}
}

// A header larger than the parsing limit is refused as a whole, never parsed truncated.
func TestHeaderLimit(t *testing.T) {
	h := startServer(t, func(o *Options) { o.MaxMessageBytes = 4 << 20 }, nil)
	rc := dialRaw(t, addrOf(t, h, "dev"))
	rc.authPlain("demo", "demo")
	rc.expect("MAIL FROM:<x@example.org>", "250 ")
	rc.expect("RCPT TO:<customer@example.net>", "250 ")
	rc.expect("DATA", "354 ")
	rc.send("From: support@example.com\r\nIn-Reply-To: <t@example.net>\r\n" +
		strings.Repeat("X-Padding: "+strings.Repeat("p", 80)+"\r\n", 12000) + // ~1.1 MB
		"From: billing@example.com\r\n\r\nbody\r\n.\r\n")
	if got := rc.reply(); !strings.HasPrefix(got, "552 5.3.4 Message header too large") {
		t.Fatalf("reply %q", got)
	}
	rc.expect("NOOP", "250 ")
	if len(h.spool.Messages()) != 0 {
		t.Fatal("message accepted")
	}
}

func TestLineTooLong(t *testing.T) {
	h := startServer(t, nil, nil)
	rc := dialRaw(t, addrOf(t, h, "dev"))
	rc.authPlain("demo", "demo")
	rc.expect("MAIL FROM:<x@example.org>", "250 ")
	rc.expect("RCPT TO:<customer@example.net>", "250 ")
	rc.expect("DATA", "354 ")
	rc.send("From: support@example.com\r\nIn-Reply-To: <t@example.net>\r\n\r\n" + strings.Repeat("y", 3000) + "\r\n.\r\n")
	if got := rc.reply(); !strings.HasPrefix(got, "554 5.6.0 Message has a line longer than 2000") {
		t.Fatalf("reply %q", got)
	}
	if len(h.spool.Messages()) != 0 {
		t.Fatal("message accepted")
	}
}

func TestMalformedFrom(t *testing.T) {
	h := startServer(t, nil, nil)
	for _, hdr := range []string{
		"Subject: no from\r\n",
		"From: support@example.com\r\nFrom: billing@example.com\r\n",
		"From: support@example.com, sales@example.com\r\n",
		"From: not an address\r\n",
	} {
		rc := dialRaw(t, addrOf(t, h, "dev"))
		rc.authPlain("demo", "demo")
		rc.expect("MAIL FROM:<x@example.org>", "250 ")
		rc.expect("RCPT TO:<customer@example.net>", "250 ")
		rc.expect("DATA", "354 ")
		rc.send(hdr + "In-Reply-To: <t@example.net>\r\n\r\nbody\r\n.\r\n")
		if got := rc.reply(); !strings.HasPrefix(got, "554 5.6.0 ") {
			t.Errorf("%q: %q", hdr, got)
		}
	}
	if len(h.spool.Messages()) != 0 {
		t.Fatal("message accepted")
	}
}

func TestNewValidates(t *testing.T) {
	rules, err := NewRules(testDirectory(t), testChannels, passThrough{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Options{Listeners: []Listener{
		{Name: "a", Address: "127.0.0.1:0", Mode: ModeImplicit},
		{Name: "a", Address: "127.0.0.1:0", Mode: "ssl"},
		{Name: "", Address: "127.0.0.1:0", Mode: ModeStartTLS},
	}}, rules)
	for _, want := range []string{"no spool", "no suppression list", "no metrics", "implicit TLS needs a TLS config",
		`duplicate name "a"`, `mode "ssl"`, "listeners[2]: name is empty", "no client could authenticate"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}
	// Insecure AUTH off loopback is refused even when everything else is right.
	_, err = New(Options{Listeners: []Listener{{Name: "dev", Address: "0.0.0.0:0", Mode: ModeStartTLS, AllowInsecureAuth: true}},
		Spool: &fakeSpool{}, Suppressions: fakeSuppressions{}, Metrics: metrics.New(prometheus.NewRegistry())}, rules)
	if err == nil || !strings.Contains(err.Error(), "insecure AUTH is only allowed on a loopback address") {
		t.Errorf("insecure AUTH on all interfaces: %v", err)
	}
	_, err = NewRules(nil, []Channel{
		{Name: "A", FromAddress: "a@example.com"},
		{Name: "A", FromAddress: "A@EXAMPLE.COM"},
		{Name: "B", FromAddress: "nope"},
		{Name: "C", FromAddress: "c@example.com", MailFrom: "bad address"},
	}, nil)
	for _, want := range []string{"no auth directory", "no composer", `duplicate channel name "A"`,
		"from address a@example.com is also channel A's", `from address "nope" is not an address`, `mail from "bad address"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in %v", want, err)
		}
	}
}

// Serve stops accepting when its context ends, waits ShutdownTimeout for open sessions, then closes them
// (go-smtp's Close does nothing after its Shutdown: the server closes the connections itself).
func TestServeShutdown(t *testing.T) {
	rules, err := NewRules(testDirectory(t), testChannels, passThrough{})
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New(prometheus.NewRegistry())
	srv, err := New(Options{
		Listeners:       []Listener{{Name: "dev", Address: "127.0.0.1:0", Mode: ModeStartTLS, AllowInsecureAuth: true}},
		ShutdownTimeout: 300 * time.Millisecond, Spool: &fakeSpool{dir: t.TempDir()}, Suppressions: fakeSuppressions{},
		Metrics: m, Logger: slogDiscard(),
	}, rules)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	addr := srv.Addr("dev").String()
	rc := dialRaw(t, addr)
	rc.expect("EHLO raw.test", "250 ")
	if v := testutil.ToFloat64(m.SessionsActive); v != 1 {
		t.Fatalf("active sessions %v", v)
	}
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("returned after %v, before the grace period", d)
	}
	if _, err := rc.r.ReadString('\n'); err == nil {
		t.Error("open session not closed")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("still accepting")
	}
	if v := testutil.ToFloat64(m.SessionsActive); v != 0 {
		t.Errorf("active sessions %v after shutdown", v)
	}
}

func slogDiscard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// TestClientConnectionLimit: one client address cannot hold more than MaxConnectionsPerClient
// connections, even with global slots free; its slot count drops when a connection closes.
func TestClientConnectionLimit(t *testing.T) {
	h := startServer(t, func(o *Options) { o.MaxConnections = 10; o.MaxConnectionsPerClient = 2 }, nil)
	a := dialRaw(t, addrOf(t, h, "submission"))
	dialRaw(t, addrOf(t, h, "submission"))
	b := overTheLimit(t, addrOf(t, h, "submission"))
	if !strings.HasPrefix(string(b), "421 4.3.2 ") || !strings.Contains(string(b), "from your address") {
		t.Fatalf("third connection from one client: %q", b)
	}
	if v := testutil.ToFloat64(h.metrics.MessagesRejected.WithLabelValues("connect", "client_connection_limit")); v != 1 {
		t.Fatalf("client_connection_limit rejections = %v", v)
	}
	a.expect("QUIT", "221 ")
	waitGreeting(t, addrOf(t, h, "submission"))
}

// overTheLimit is everything the server says to one more connection (a refusal, then close).
func overTheLimit(t *testing.T, addr string) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(c)
	return b
}

// waitGreeting dials addr until the server greets with 220 (a connection slot is free again).
func waitGreeting(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		line := make([]byte, 4)
		_, _ = io.ReadFull(c, line)
		c.Close()
		if string(line) == "220 " {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed: %q", line)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Reply-To may only name addresses in the domains of channels the principal may reply on.
func TestReplyTo(t *testing.T) {
	h := startServer(t, nil, nil)
	chans := append(append([]Channel(nil), testChannels...),
		Channel{Name: "Partner", FromAddress: "help@partner.example", Transport: "outbox"})
	r, err := NewRules(testDirectory(t), chans, passThrough{})
	if err != nil {
		t.Fatal(err)
	}
	h.srv.SetRules(r)
	for _, tc := range []struct{ user, replyTo, want string }{
		{"demo", "support+4711@example.com", "250 "},
		{"demo", `"Sales team" <sales@Example.COM>`, "250 "},
		{"demo", "x@evil.example", "550 5.7.1 Reply-To x@evil.example is not allowed"},
		{"demo", "a@example.com, b@evil.example", "550 5.7.1 Reply-To b@evil.example"},
		{"demo", "help@partner.example", "550 5.7.1 "}, // a channel, but not one demo may use
		{"demo", "x@sub.example.com", "550 5.7.1 "},
		{"replier", "help@partner.example", "550 5.7.1 "},
		{"demo", "<<<not an address", "554 5.6.0 "},
	} {
		rc := dialRaw(t, addrOf(t, h, "dev"))
		rc.authPlain(tc.user, tc.user)
		rc.expect("MAIL FROM:<x@example.org>", "250 ")
		rc.expect("RCPT TO:<customer@example.net>", "250 ")
		rc.expect("DATA", "354 ")
		rc.send("From: support@example.com\r\nReply-To: " + tc.replyTo + "\r\nIn-Reply-To: <t@example.net>\r\n\r\nbody\r\n.\r\n")
		if got := rc.reply(); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s, Reply-To %s: %q, want %s", tc.user, tc.replyTo, got, tc.want)
		}
	}
	if n := len(h.spool.Messages()); n != 2 {
		t.Fatalf("%d messages queued, want 2", n)
	}
}

// histogramCount is how many observations a histogram holds.
func histogramCount(t *testing.T, h prometheus.Histogram) uint64 {
	t.Helper()
	var m dto.Metric
	if err := h.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}
