package compose

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// replyMessage streams a reply whose one body part (text/html or text/plain, 8bit) is about size
// bytes, generated on the fly so the input never sits in memory.
type replyMessage struct {
	head  *strings.Reader
	left  int
	line  []byte
	trail []byte
}

func newReplyMessage(mediaType string, size int) *replyMessage {
	head := baseHeader + "Subject: Re: your order\r\nX-Mailgate-Ticket: 123456\r\nIn-Reply-To: <c@example.org>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: " + mediaType + "; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
	line := "Thank you for your message about the order; here is everything we know so far, point by point.\r\n"
	if mediaType == "text/html" {
		line = "<p>Thank you for your message about the <b>order</b>; here is everything we know so far.</p>\r\n"
	}
	return &replyMessage{head: strings.NewReader(head), left: size, line: []byte(line)}
}

func (m *replyMessage) Read(p []byte) (int, error) {
	if m.head.Len() > 0 {
		return m.head.Read(p)
	}
	n := 0
	for n < len(p) {
		if len(m.trail) == 0 {
			if m.left <= 0 {
				break
			}
			m.trail = m.line
			m.left -= len(m.line)
		}
		c := copy(p[n:], m.trail)
		m.trail = m.trail[c:]
		n += c
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// composeRSSChild is set in the environment of the child process TestComposeMemory starts.
const composeRSSChild = "MAILGATE_COMPOSE_RSS_CHILD"

// TestComposeMemory composes 10 replies of 9 MB (one body part each: HTML, and text that gets an HTML
// alternative from the template) at once, with template and signature, in a child process, and reads
// the child's peak resident set size (VmHWM). The figure is printed; it must stay under 400 MiB (it
// was 1.3 GB before composition had a memory budget and stopped copying bodies).
//
//	go test ./relay/compose -run TestComposeMemory -v
//
// MAILGATE_COMPOSE_RSS_CHILD_BUDGET=<bytes> tries another budget than the default.
func TestComposeMemory(t *testing.T) {
	if os.Getenv(composeRSSChild) != "" {
		composeConcurrently(t)
		return
	}
	if testing.Short() {
		t.Skip("composes 180 MB")
	}
	if vmHWM() == 0 {
		t.Skip("no /proc/self/status VmHWM here")
	}
	for _, mediaType := range []string{"text/html", "text/plain"} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestComposeMemory$", "-test.v")
		cmd.Env = append(os.Environ(), composeRSSChild+"="+mediaType)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		m := regexp.MustCompile(`peak-rss-bytes=(\d+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("child printed no figure:\n%s", out)
		}
		rss, _ := strconv.ParseUint(string(m[1]), 10, 64)
		t.Logf("10 concurrent 9 MB %s replies: peak RSS %d MiB", mediaType, rss>>20)
		fmt.Printf("compose-memory %s: 10 concurrent 9 MB replies, peak RSS %d MiB\n", mediaType, rss>>20)
		if rss > 400<<20 {
			t.Errorf("%s: peak RSS %d MiB, want under 400 MiB", mediaType, rss>>20)
		}
	}
}

// composeConcurrently is the child's part of TestComposeMemory.
func composeConcurrently(t *testing.T) {
	mediaType := os.Getenv(composeRSSChild)
	ch := channel(TicketFormat{Style: StyleBrackets}, brandTemplateWithText)(t)
	agent := withJane(t)
	budget, _ := strconv.ParseInt(os.Getenv(composeRSSChild+"_BUDGET"), 10, 64)
	comp := New(Options{Budget: NewBudget(budget)})
	var wg sync.WaitGroup
	errs := make([]error, 10)
	for i := range errs {
		wg.Go(func() {
			out := &countingWriter{}
			res, err := comp.Compose(context.Background(), newReplyMessage(mediaType, 9_000_000), out, Request{Channel: ch, Agent: agent, Now: fixedNow, InputSize: 9_001_000})
			if err == nil && res.Size < 9_000_000 {
				err = fmt.Errorf("composed only %d bytes", res.Size)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "peak-rss-bytes=%d\n", vmHWM())
	os.Stdout.Write(b.Bytes())
}
