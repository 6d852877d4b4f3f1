package smtp

import (
	"bytes"
	"errors"
	"io"
	"net/textproto"
	"strings"
	"testing"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/mailgate/mailgate/relay"
)

// scriptedPeer plays the server's output and swallows the client's commands.
type scriptedPeer struct {
	r   io.Reader
	out bytes.Buffer
}

func (p *scriptedPeer) Read(b []byte) (int, error)  { return p.r.Read(b) }
func (p *scriptedPeer) Write(b []byte) (int, error) { return p.out.Write(b) }
func (p *scriptedPeer) Close() error                { return nil }

// FuzzUpstreamReply feeds arbitrary server output to the pre-TLS EHLO parser and the reply
// classification: no panic, every mapped reply keeps its code (but for the quota dialect, made
// temporary), and relay.Classify never bounces — let alone suppresses — for a reply about the relay's
// own account, at AUTH or anywhere else.
func FuzzUpstreamReply(f *testing.F) {
	f.Add("250-fake.example\r\n250-STARTTLS\r\n250 AUTH LOGIN PLAIN\r\n")
	f.Add("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled\r\n")
	f.Add("554-5.2.0 STOREDRV.Submission.Exception:\r\n554 5.2.0 SubmissionQuotaExceededException\r\n")
	f.Add("432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded\r\n")
	f.Add("550 5.1.1 <a@b>: Recipient address rejected\r\n")
	f.Add("421\r\n")
	f.Add("250 \r\n")
	tr, err := New(Options{Name: "fuzz", Host: "127.0.0.1", ThrottleRetryAfter: 1})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, out string) {
		tp := textproto.NewConn(&scriptedPeer{r: strings.NewReader(out)})
		ext, err := ehlo(tp, "mailgate.test")
		if err == nil {
			for k := range ext {
				if k != strings.ToUpper(k) {
					t.Fatalf("extension keyword %q not upper-cased", k)
				}
			}
			return
		}
		var se *gosmtp.SMTPError
		if !errors.As(err, &se) {
			return // a syntax or I/O error, not a reply
		}
		for _, st := range []relay.Stage{relay.StageMail, relay.StageRcpt, relay.StageData, relay.StageAuth} {
			re := tr.replyError(se, st)
			if re.Code < 400 || re.Code > 599 || re.Msg == "" {
				t.Fatalf("reply %d %q at %s classified as %v", se.Code, se.Message, st, re)
			}
			if _, ok := re.Enhanced.Parts(); !ok {
				t.Fatalf("malformed enhanced code %q", re.Enhanced)
			}
			fault := relay.Classify(re)
			if (st == relay.StageAuth || re.Reason == ReasonUpstreamAuth || re.Reason == ReasonQuota) && fault.Bounces() {
				t.Fatalf("relay-side failure %d %q at %s bounces (%s)", se.Code, se.Message, st, fault)
			}
			if fault.Suppresses() && st != relay.StageRcpt {
				t.Fatalf("reply %d %q at %s suppresses the address", se.Code, se.Message, st)
			}
			if re.Reason != ReasonQuota && se.Code >= 400 && se.Code <= 599 && re.Code != se.Code {
				t.Fatalf("reply %d changed its code: %v", se.Code, re)
			}
		}
	})
}
