package admin

import (
	"encoding/json"
	"net/http"
	"sort"

	"github.com/mailgate/mailgate/auth/oauth"
)

// Credential is one OAuth credential the daemon sends with (a Microsoft 365 SMTP or Graph server).
// Status reports its state without a request to the token endpoint.
type Credential interface {
	Status() oauth.Status
}

// SetCredentials replaces the credentials GET /oauth reports; the daemon calls it with each
// configuration generation, so the answer is always the state of the tokens mail is sent with now.
func (s *Server) SetCredentials(creds map[string]Credential) {
	s.mu.Lock()
	s.creds = creds
	s.mu.Unlock()
}

// credentials answers GET /oauth: every credential's state as the running daemon holds it, sorted by
// server. `mailgate oauth status` shows it, so an operator sees the tokens the daemon uses rather than
// the result of a fresh request of the command's own (which may succeed while the daemon's fails).
func (s *Server) credentials(w http.ResponseWriter, _ *http.Request) {
	s.mu.RLock()
	out := make([]oauth.Status, 0, len(s.creds))
	for _, c := range s.creds {
		out = append(out, c.Status())
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Server < out[j].Server })
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}
