package queue

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// FuzzParseMeta feeds arbitrary bytes to the spool metadata parser: it must never panic, and whatever
// it accepts must survive an encode/parse round trip unchanged (so an update never corrupts an entry).
func FuzzParseMeta(f *testing.F) {
	e := Entry{
		ID:       "0123456789abcdefg",
		Envelope: relay.Envelope{Channel: "Support", Transport: "m365", MailFrom: "b@example.com", Recipients: []string{"a@example.net"}},
		Size:     10, Created: time.Unix(1700000000, 0).UTC(), NextAttempt: time.Unix(1700000060, 0).UTC(),
		Recipients: []Recipient{{Address: "a@example.net", Status: Pending}, {Address: "c@example.net", Status: Bounced, Code: 550, Enhanced: "5.1.1", Diagnostic: "unknown"}},
		Attempts:   2, LastError: "451 4.3.0 later",
	}
	good, _ := encodeMeta(&e)
	f.Add(good)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"id":"0123456789abcdefg","recipients":[{"address":"x","status":"weird"}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte("\x00\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := parseMeta(data)
		if err != nil {
			return
		}
		if !validID(e.ID) || len(e.Recipients) == 0 || e.Envelope.Transport == "" {
			t.Fatalf("accepted an entry the scheduler cannot handle: %+v", e)
		}
		again, err := encodeMeta(&e)
		if err != nil {
			t.Fatalf("accepted entry does not encode: %v", err)
		}
		e2, err := parseMeta(again)
		if err != nil {
			t.Fatalf("round trip refused: %v\n%s", err, again)
		}
		if !reflect.DeepEqual(normalize(e), normalize(e2)) {
			t.Fatalf("round trip changed the entry:\n%+v\n%+v", e, e2)
		}
	})
}

// normalize drops what JSON cannot distinguish (monotonic clock, nil vs empty slices, time zones).
func normalize(e Entry) Entry {
	e = e.clone()
	e.Created, e.NextAttempt = e.Created.UTC().Round(0), e.NextAttempt.UTC().Round(0)
	e.Envelope.Received = e.Envelope.Received.UTC().Round(0)
	if len(e.Envelope.Recipients) == 0 {
		e.Envelope.Recipients = nil
	}
	for i := range e.Recipients {
		e.Recipients[i].Time = e.Recipients[i].Time.UTC().Round(0)
	}
	return e
}

// FuzzSegmentRecovery feeds arbitrary bytes to start-up as the only segment of a spool, seeded with a
// real segment (whole, cut, with a flipped byte). Recovery must never panic or fail, and must never
// resume a message with a body other than the one it was committed with: whatever it resumes of the
// seed's messages is byte for byte what was committed, and anything else has the size its metadata
// says.
func FuzzSegmentRecovery(f *testing.F) {
	src := f.TempDir()
	bodies := seedSpool(f, src, 12)
	segs := files(f, filepath.Join(src, "seg"))
	seed, err := os.ReadFile(filepath.Join(src, "seg", segs[0]))
	if err != nil {
		f.Fatal(err)
	}
	end := int64(0)
	for _, r := range segmentRecords(f, src) {
		if r.seg == segs[0] {
			end = r.end
		}
	}
	seed = seed[:end] // the zeros after the records add nothing but time
	f.Add(seed)
	f.Add(seed[:len(seed)/2])
	flipped := bytes.Clone(seed)
	flipped[len(flipped)/3] ^= 0x40
	f.Add(flipped)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		must(t, os.MkdirAll(filepath.Join(dir, "seg"), 0o700))
		must(t, os.WriteFile(filepath.Join(dir, "seg", segs[0]), data, 0o600))
		h := open(t, dir, TransportMap{}, func(o *Options) { o.SegmentBytes = 64 << 10 })
		defer h.closeNow(t)
		for _, e := range h.q.List() {
			body, err := spoolBody(h.q, e.ID)
			if err != nil {
				t.Fatalf("%s resumed without a readable body: %v", e.ID, err)
			}
			if want, ok := bodies[e.ID]; ok && body != want {
				t.Fatalf("%s resumed with a different body: %q", e.ID, body)
			}
			if int64(len(body)) != e.Size {
				t.Fatalf("%s resumed with %d bytes, metadata says %d", e.ID, len(body), e.Size)
			}
		}
	})
}

// FuzzReadRecord feeds arbitrary bytes to the segment framing parser: it must never panic, never
// accept a record that runs past the data, and whatever it accepts must frame back to exactly the
// bytes it was read from.
func FuzzReadRecord(f *testing.F) {
	f.Add(appendRecord(nil, recBody, []byte("0123456789abcdefgHello\r\n")))
	f.Add(appendRecord(appendRecord(nil, recRemove, []byte("0123456789abcdefg")), recUpdate, []byte(`{"version":1}`)))
	f.Add(make([]byte, 32))
	f.Add([]byte{5, 0, 0, 0, 1, 2, 3, 4, 'B', 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var buf []byte
		off := int64(0)
		for {
			kind, payload, grown, next, err := readRecord(r, int64(len(data)), off, buf)
			buf = grown
			if err != nil {
				if !errors.Is(err, errTorn) && !errors.Is(err, io.EOF) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if next <= off || next > int64(len(data)) {
				t.Fatalf("record at %d ends at %d of %d", off, next, len(data))
			}
			if again := appendRecord(nil, kind, payload); !bytes.Equal(again, data[off:next]) {
				t.Fatalf("record at %d does not frame back to its bytes", off)
			}
			off = next
		}
	})
}
