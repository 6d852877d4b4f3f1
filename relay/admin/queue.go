package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"

	"github.com/mailgate/mailgate/relay/queue"
)

// Queue is what the queue API needs of the running daemon's queue: `mailgate queue` acts on the live
// scheduler through it instead of racing it on the spool files.
type Queue interface {
	List() []queue.Entry
	Get(id string) (queue.Entry, bool)
	Header(id string, maxBytes int64) (textproto.MIMEHeader, error)
	RetryNow(id string) error
	Drop(id string) error
	Hold(id string) error
	Release(id string) error
}

// QueueMessage is GET /queue/{id}: the entry and the header of the message as it will be sent.
type QueueMessage struct {
	Entry  queue.Entry          `json:"entry"`
	Header textproto.MIMEHeader `json:"header"`
}

type queueAPI struct{ q Queue }

func (a queueAPI) list(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.q.List())
}

func (a queueAPI) retry(w http.ResponseWriter, r *http.Request) {
	a.act(w, a.q.RetryNow(r.PathValue("id")))
}

func (a queueAPI) drop(w http.ResponseWriter, r *http.Request) { a.act(w, a.q.Drop(r.PathValue("id"))) }

func (a queueAPI) hold(w http.ResponseWriter, r *http.Request) { a.act(w, a.q.Hold(r.PathValue("id"))) }

func (a queueAPI) release(w http.ResponseWriter, r *http.Request) {
	a.act(w, a.q.Release(r.PathValue("id")))
}

// show answers one message with its header (64 KiB at most: a header is rarely a tenth of that).
func (a queueAPI) show(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	e, ok := a.q.Get(id)
	if !ok {
		http.Error(w, fmt.Sprintf("no queued message %q", id), http.StatusNotFound)
		return
	}
	h, err := a.q.Header(id, 64<<10)
	if err != nil && !errors.Is(err, queue.ErrNoEntry) {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(QueueMessage{Entry: e, Header: h})
}

// act answers an operation: the error's text goes to the operator, who holds the token.
func (a queueAPI) act(w http.ResponseWriter, err error) {
	switch {
	case err == nil:
		fmt.Fprintln(w, "ok")
	case errors.Is(err, queue.ErrNoEntry):
		http.Error(w, err.Error(), http.StatusNotFound)
	case errors.Is(err, queue.ErrHeld):
		http.Error(w, err.Error(), http.StatusConflict)
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}
