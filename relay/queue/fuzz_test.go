package queue

import (
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
