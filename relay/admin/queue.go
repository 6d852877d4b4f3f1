package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/mailgate/mailgate/relay/queue"
)

// Queue is what the queue API needs of the running daemon's queue: `mailgate queue` acts on the live
// scheduler through it instead of racing it on the spool files.
type Queue interface {
	List() []queue.Entry
	RetryNow(id string) error
	Drop(id string) error
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

// act answers an operation: the error's text goes to the operator, who holds the token.
func (a queueAPI) act(w http.ResponseWriter, err error) {
	switch {
	case err == nil:
		fmt.Fprintln(w, "ok")
	case errors.Is(err, queue.ErrNoEntry):
		http.Error(w, err.Error(), http.StatusNotFound)
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}
