package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/mailgate/mailgate/relay"
	"github.com/mailgate/mailgate/relay/store"
)

// DeliveryLog answers delivery-log searches (relay/store).
type DeliveryLog interface {
	Deliveries(ctx context.Context, f store.DeliveryFilter) ([]relay.DeliveryRecord, error)
}

// DeliveryJSON is one delivery-log record as the operator API and `mailgate log search --json` show it:
// snake_case names that stay stable across releases (agent applications and scripts depend on them).
type DeliveryJSON struct {
	Time       string                  `json:"time"`
	QueueID    string                  `json:"queue_id"`
	MessageID  string                  `json:"message_id"`
	Ticket     string                  `json:"ticket"`
	Channel    string                  `json:"channel"`
	Principal  string                  `json:"principal"`
	Agent      string                  `json:"agent,omitempty"`
	Status     string                  `json:"status"`
	Attempts   int                     `json:"attempts"`
	LastReply  string                  `json:"last_reply"`
	Recipients []DeliveryRecipientJSON `json:"recipients"`
}

// DeliveryRecipientJSON is one recipient's state in a DeliveryJSON.
type DeliveryRecipientJSON struct {
	Address  string `json:"address"`
	Status   string `json:"status"`
	Code     int    `json:"code,omitempty"`
	Enhanced string `json:"enhanced_code,omitempty"`
	Reply    string `json:"reply,omitempty"`
	Time     string `json:"time,omitempty"`
}

// DeliveryView is r as DeliveryJSON.
func DeliveryView(r relay.DeliveryRecord) DeliveryJSON {
	v := DeliveryJSON{Time: r.Time.UTC().Format(time.RFC3339), QueueID: r.QueueID, MessageID: r.MessageID,
		Ticket: r.Ticket, Channel: r.Channel, Principal: r.Principal, Agent: r.Agent, Status: r.Status,
		Attempts: r.Attempts, LastReply: r.LastReply, Recipients: []DeliveryRecipientJSON{}}
	for _, st := range r.States {
		rj := DeliveryRecipientJSON{Address: st.Address, Status: st.Status, Code: st.Code, Enhanced: string(st.Enhanced), Reply: st.Reply}
		if !st.Time.IsZero() {
			rj.Time = st.Time.UTC().Format(time.RFC3339)
		}
		v.Recipients = append(v.Recipients, rj)
	}
	if len(r.States) == 0 { // a record from before the per-recipient log
		for _, a := range r.Recipients {
			v.Recipients = append(v.Recipients, DeliveryRecipientJSON{Address: a, Status: r.Status})
		}
	}
	return v
}

// deliveries is GET /deliveries?ticket=N|message-id=M|queue-id=Q|rcpt=A[&limit=n]: what happened to a
// ticket's or a message's mail, read-only, for agent applications (with the operator token). One of
// the selectors is required: the endpoint answers questions about messages, it does not export the log.
func deliveries(log DeliveryLog) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		f := store.DeliveryFilter{Ticket: q.Get("ticket"), MessageID: q.Get("message-id"), QueueID: q.Get("queue-id"), Rcpt: q.Get("rcpt")}
		if f.Ticket == "" && f.MessageID == "" && f.QueueID == "" && f.Rcpt == "" {
			http.Error(w, "give ticket=, message-id=, queue-id= or rcpt=", http.StatusBadRequest)
			return
		}
		if n, err := strconv.Atoi(q.Get("limit")); err == nil && n > 0 {
			f.Limit = min(n, 1000)
		}
		recs, err := log.Deliveries(r.Context(), f)
		if err != nil {
			http.Error(w, "the delivery log is unavailable", http.StatusServiceUnavailable)
			return
		}
		out := make([]DeliveryJSON, 0, len(recs))
		for _, rec := range recs {
			out = append(out, DeliveryView(rec))
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	}
}
