package admin

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/auth/oauth"
	"github.com/mailgate/mailgate/relay/peertest"
)

type fixedCredential oauth.Status

func (c fixedCredential) Status() oauth.Status { return oauth.Status(c) }

// TestCredentialsEndpoint: GET /oauth needs the token and answers the credentials of the latest
// generation, sorted by server; a reload's SetCredentials replaces them.
func TestCredentialsEndpoint(t *testing.T) {
	s := New(Options{Gatherer: prometheus.NewRegistry(), Token: []byte(token)})
	base := "http://" + serve(t, &s.listener)
	s.SetCredentials(map[string]Credential{
		"m365-smtp":  fixedCredential{Server: "m365-smtp", Flow: oauth.ClientCredentials, Healthy: false, LastError: "AADSTS7000215: invalid client secret", Remedy: "rotate the secret"},
		"m365-graph": fixedCredential{Server: "m365-graph", Flow: oauth.ClientCredentials, Healthy: true},
		"a-relay":    fixedCredential{Server: "a-relay", Flow: oauth.AuthorizationCode, Healthy: true},
		"z-relay":    fixedCredential{Server: "z-relay", Flow: oauth.AuthorizationCode, Healthy: true},
	})
	if code, _ := peertest.HTTP(t, "GET", base+"/oauth", "", ""); code != http.StatusUnauthorized {
		t.Fatalf("GET /oauth without the token: %d, want 401", code)
	}
	code, body := peertest.HTTP(t, "GET", base+"/oauth", "", token)
	var got []oauth.Status
	if code != 200 || json.Unmarshal([]byte(body), &got) != nil {
		t.Fatalf("GET /oauth: %d %s", code, body)
	}
	var order []string
	for _, st := range got {
		order = append(order, st.Server)
	}
	if strings.Join(order, " ") != "a-relay m365-graph m365-smtp z-relay" || !got[1].Healthy || got[2].Healthy || got[2].Remedy != "rotate the secret" {
		t.Fatalf("GET /oauth answered %+v", got)
	}

	s.SetCredentials(nil) // a reload that removed every OAuth server
	if code, body := peertest.HTTP(t, "GET", base+"/oauth", "", token); code != 200 || body != "[]\n" {
		t.Fatalf("GET /oauth after the reload: %d %q", code, body)
	}
}
