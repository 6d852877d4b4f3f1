package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mailgate/mailgate/relay/queue"
)

// queueAPI serves the running daemon's queue on the admin listener, so `mailgate queue` acts on the
// live scheduler instead of racing it on the spool files.
type queueAPI struct{ q *queue.Queue }

func (a queueAPI) register(mux interface {
	Handle(string, http.Handler)
}) {
	mux.Handle("GET /queue", http.HandlerFunc(a.list))
	mux.Handle("POST /queue/{id}/retry", http.HandlerFunc(a.retry))
	mux.Handle("POST /queue/{id}/drop", http.HandlerFunc(a.drop))
}

func (a queueAPI) list(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(a.q.List())
}

func (a queueAPI) retry(w http.ResponseWriter, r *http.Request) {
	a.act(w, a.q.RetryNow(r.PathValue("id")))
}
func (a queueAPI) drop(w http.ResponseWriter, r *http.Request) { a.act(w, a.q.Drop(r.PathValue("id"))) }

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

func cmdQueue(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "retry" && args[0] != "drop") {
		return &exitError{code: 2, msg: "usage: mailgate queue list | retry ID | drop ID [--admin ADDR]"}
	}
	sub := args[0]
	fs := newFlags(env, "queue "+sub, map[string]string{"list": "", "retry": "ID", "drop": "ID"}[sub])
	adminAddr := fs.String("admin", "127.0.0.1:9465", "admin listener of the running daemon")
	ids, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 10 * time.Second}
	base := "http://" + *adminAddr
	if sub == "list" {
		resp, err := client.Get(base + "/queue")
		if err != nil {
			return fmt.Errorf("is mailgate serve running? %w", err)
		}
		defer resp.Body.Close()
		var entries []queue.Entry
		if err := json.NewDecoder(resp.Body).Decode(&entries); err != nil {
			return err
		}
		w := tabwriter.NewWriter(env.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(w, "QUEUE-ID\tCHANNEL\tTRANSPORT\tAGE\tATTEMPTS\tPENDING\tNEXT\tLAST-ERROR")
		for _, e := range entries {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", e.ID, e.Envelope.Channel, e.Envelope.Transport,
				time.Since(e.Created).Round(time.Second), e.Attempts, strings.Join(e.Pending(), ","),
				e.NextAttempt.Format(time.RFC3339), oneLine(e.LastError))
		}
		return w.Flush()
	}
	if len(ids) != 1 {
		fs.Usage()
		return &exitError{code: 2}
	}
	id := ids[0]
	resp, err := client.Post(base+"/queue/"+url.PathEscape(id)+"/"+sub, "text/plain", nil)
	if err != nil {
		return fmt.Errorf("is mailgate serve running? %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", sub, id, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(env.stdout, "%s %s: ok\n", sub, id)
	return nil
}
