package compose

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-message"
)

// bigMessage streams a multipart/mixed message with a text body and one base64 attachment whose
// encoded size is about size bytes, generated on the fly (never held in memory).
type bigMessage struct {
	head, tail *strings.Reader
	lines      int // base64 lines of 76 characters still to produce
	rng        *rand.ChaCha8
	buf        []byte
	raw        [57]byte
	line       [78]byte
	sum        hashWriter
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
}

func newBigMessage(size int) *bigMessage {
	head := baseHeader + "Subject: Large file\r\nX-Mailgate-Ticket: 1\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"big\"\r\n\r\n" +
		"--big\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Here is the file.</p>\r\n" +
		"--big\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"big.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
	return &bigMessage{
		head:  strings.NewReader(head),
		tail:  strings.NewReader("--big--\r\n"),
		lines: size / 78,
		rng:   seeded(42),
		sum:   sha256.New(),
	}
}

func (m *bigMessage) Read(p []byte) (int, error) {
	if m.head.Len() > 0 {
		return m.head.Read(p)
	}
	n := 0
	for n < len(p) {
		if len(m.buf) == 0 {
			if m.lines == 0 {
				break
			}
			m.lines--
			for i := 0; i < len(m.raw); i += 8 {
				v := m.rng.Uint64()
				for k := 0; k < 8 && i+k < len(m.raw); k++ {
					m.raw[i+k] = byte(v >> (8 * k))
				}
			}
			m.sum.Write(m.raw[:])
			line := appendBase64(m.line[:0], m.raw[:])
			m.buf = append(line, '\r', '\n')
		}
		c := copy(p[n:], m.buf)
		m.buf = m.buf[c:]
		n += c
	}
	if n > 0 {
		return n, nil
	}
	return m.tail.Read(p)
}

func appendBase64(dst, src []byte) []byte {
	const enc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i+2 < len(src); i += 3 {
		v := uint(src[i])<<16 | uint(src[i+1])<<8 | uint(src[i+2])
		dst = append(dst, enc[v>>18&63], enc[v>>12&63], enc[v>>6&63], enc[v&63])
	}
	return dst
}

// heapSampler records the peak of live heap objects while composition runs (runtime/metrics does
// not stop the world, unlike ReadMemStats).
func heapSampler() (stop func() (peak uint64)) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var peak atomic.Uint64
	done := make(chan struct{})
	finished := make(chan struct{})
	read := func() {
		metrics.Read(sample)
		if v := sample[0].Value.Uint64(); v > peak.Load() {
			peak.Store(v)
		}
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				read()
			}
		}
	}()
	return func() uint64 {
		close(done)
		<-finished
		read()
		return peak.Load()
	}
}

// vmHWM is the process's peak resident set size (Linux), in bytes; 0 where unknown.
func vmHWM() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				kb, _ := strconv.ParseUint(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// BenchmarkComposeLarge composes 4 MB and 40 MB messages (SES's limit) with template, signature and
// an attachment policy, and reports the peak live heap above the starting point: it must not grow
// with the attachment's size. Run one size per process to read peak-rss-MB for that size alone:
//
//	go test ./relay/compose -run '^$' -bench 'ComposeLarge/40MB' -benchtime 3x
func BenchmarkComposeLarge(b *testing.B) {
	for _, size := range []int{4 << 20, 40 << 20} {
		b.Run(fmt.Sprintf("%dMB", size>>20), func(b *testing.B) {
			ch := channel(TicketFormat{Style: StyleBrackets}, brandTemplate, ".pdf", ".png")(b)
			agent := withJane(b)
			comp := New(Options{})
			var worst uint64
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				src := newBigMessage(size)
				runtime.GC()
				sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
				metrics.Read(sample)
				base := sample[0].Value.Uint64()
				stop := heapSampler()
				b.StartTimer()
				out := &countingWriter{}
				res, err := comp.Compose(context.Background(), src, out, Request{Channel: ch, Agent: agent, Now: fixedNow})
				b.StopTimer()
				peak := stop()
				if err != nil {
					b.Fatal(err)
				}
				if res.Size != out.n || res.Size < int64(size) {
					b.Fatalf("composed %d bytes (Size %d) from %d", out.n, res.Size, size)
				}
				if peak > base && peak-base > worst {
					worst = peak - base
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(worst)/(1<<20), "peak-heap-growth-MB")
			b.ReportMetric(float64(vmHWM())/(1<<20), "peak-rss-MB")
		})
	}
}

// TestLargeAttachmentPassesIntact composes a 12 MB message and checks the attachment's decoded bytes
// against the generator's digest (the golden matrix covers small ones).
func TestLargeAttachmentPassesIntact(t *testing.T) {
	if testing.Short() {
		t.Skip("large message")
	}
	src := newBigMessage(12 << 20)
	ch := channel(TicketFormat{Style: StyleBrackets}, brandTemplate, ".pdf")(t)
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		_, err := New(Options{}).Compose(context.Background(), src, pw, Request{Channel: ch, Agent: withJane(t), Now: fixedNow})
		pw.CloseWithError(err)
		errc <- err
	}()
	sums, err := attachmentDigests(pr)
	if cerr := <-errc; cerr != nil {
		t.Fatal(cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%x", src.sum.Sum(nil))
	if sums["big.pdf"] != want {
		t.Errorf("attachment digest %s, want %s", sums["big.pdf"], want)
	}
}

// attachmentDigests reads a message with go-message (decoding transfer encodings while streaming) and
// returns the sha256 of each named part's decoded bytes.
func attachmentDigests(r io.Reader) (map[string]string, error) {
	m, err := message.Read(r)
	if err != nil {
		return nil, err
	}
	sums := map[string]string{}
	err = m.Walk(func(path []int, e *message.Entity, err error) error {
		if err != nil {
			return err
		}
		_, params, _ := e.Header.ContentDisposition()
		if params["filename"] == "" {
			return nil
		}
		h := sha256.New()
		if _, err := io.Copy(h, e.Body); err != nil {
			return err
		}
		sums[params["filename"]] = fmt.Sprintf("%x", h.Sum(nil))
		return nil
	})
	if err != nil {
		return nil, err
	}
	_, err = io.Copy(io.Discard, r)
	return sums, err
}
