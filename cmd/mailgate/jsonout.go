package main

import (
	"encoding/json"
	"io"
	"time"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/queue"
)

// The --json views of the list commands: one object per row, snake_case names that stay stable across
// releases (scripts depend on them), times in RFC 3339 UTC. They are the CLI's own shapes, not the Go
// types', so a renamed field inside mailgate does not break an operator's script.

type bounceJSON struct {
	Time       string `json:"time"`
	Address    string `json:"address"`
	Channel    string `json:"channel"`
	Code       int    `json:"code"`
	Enhanced   string `json:"enhanced_code"`
	Fault      string `json:"fault"`
	Suppressed bool   `json:"suppressed"`
	Reason     string `json:"reason"`
	MessageID  string `json:"message_id"`
	Ticket     string `json:"ticket"`
	QueueID    string `json:"queue_id"`
	Diagnostic string `json:"diagnostic"`
}

func bounceView(b relay.Bounce) bounceJSON {
	return bounceJSON{Time: b.Time.UTC().Format(time.RFC3339), Address: b.Address, Channel: b.Channel, Code: b.Code,
		Enhanced: string(b.Enhanced), Fault: b.Fault.String(), Suppressed: b.Suppressed, Reason: b.Reason,
		MessageID: b.MessageID, Ticket: b.Ticket, QueueID: b.QueueID, Diagnostic: b.Diagnostic}
}

type queueRecipientJSON struct {
	Address    string `json:"address"`
	Status     string `json:"status"`
	Code       int    `json:"code,omitempty"`
	Enhanced   string `json:"enhanced_code,omitempty"`
	Fault      string `json:"fault,omitempty"`
	Diagnostic string `json:"diagnostic,omitempty"`
}

type queueEntryJSON struct {
	QueueID     string               `json:"queue_id"`
	Channel     string               `json:"channel"`
	Transport   string               `json:"transport"`
	MessageID   string               `json:"message_id"`
	Ticket      string               `json:"ticket"`
	Principal   string               `json:"principal"`
	Created     string               `json:"created"`
	Attempts    int                  `json:"attempts"`
	NextAttempt string               `json:"next_attempt"`
	LastError   string               `json:"last_error,omitempty"`
	Recipients  []queueRecipientJSON `json:"recipients"`
}

func queueView(e queue.Entry) queueEntryJSON {
	v := queueEntryJSON{QueueID: e.ID, Channel: e.Envelope.Channel, Transport: e.Envelope.Transport,
		MessageID: e.Envelope.MessageID, Ticket: e.Envelope.Ticket, Principal: e.Envelope.Principal,
		Created: e.Created.UTC().Format(time.RFC3339), Attempts: e.Attempts,
		NextAttempt: e.NextAttempt.UTC().Format(time.RFC3339), LastError: e.LastError,
		Recipients: []queueRecipientJSON{}}
	for _, r := range e.Recipients {
		v.Recipients = append(v.Recipients, queueRecipientJSON{Address: r.Address, Status: string(r.Status), Code: r.Code,
			Enhanced: string(r.Enhanced), Fault: r.Fault, Diagnostic: r.Diagnostic})
	}
	return v
}

// writeJSON prints rows as one indented JSON array ([] when there are none).
func writeJSON[T any](w io.Writer, rows []T) error {
	if rows == nil {
		rows = []T{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rows)
}

func mapRows[S, T any](in []S, f func(S) T) []T {
	out := make([]T, 0, len(in))
	for _, x := range in {
		out = append(out, f(x))
	}
	return out
}
