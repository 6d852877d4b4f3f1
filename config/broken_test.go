package config

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestBrokenConfigs loads each file of testdata/broken — a valid production configuration with one kind
// of mistake — and asserts exactly the problems reported: their paths, their messages, nothing more.
func TestBrokenConfigs(t *testing.T) {
	tests := map[string][]Problem{
		"bad-listener.yaml": {
			{"listeners[0].address", `invalid address "0.0.0.0" (write host:port, e.g. 0.0.0.0:587)`},
			{"listeners[0].tls", `must be starttls or implicit, not "tls"`},
		},
		"unknown-transport.yaml": {
			{"channels[0].transport", `unknown server "m365" (define it under smtp_servers or graph_servers, or use ses or outbox)`},
		},
		"plain-secret.yaml": {
			{"smtp_servers[0].password", "plain-text secrets are refused outside development: use kms:<...> (mailgate secret encrypt --kms KEY), " +
				"local:<...> (mailgate secret encrypt --local KEYRING), env:NAME or file:PATH"},
		},
		"oauth-missing-fields.yaml": {
			{"smtp_servers[0].oauth.client_id", "required: the Application (client) ID of the app registration"},
			{"smtp_servers[0].oauth.client_secret", "required: a secret reference (kms:, local:, env:NAME, file:PATH), or client_certificate and client_key"},
			{"smtp_servers[0].oauth.mailbox", `required: the mailbox address mail is sent as (got "")`},
		},
		"graph-server.yaml": {
			{"graph_servers[0].name", `duplicate server "relay" (smtp_servers and graph_servers share names)`},
			{"graph_servers[0].endpoint", `must be an https URL such as https://graph.microsoft.com/v1.0 (the access token is a bearer credential), got "http://graph.example.net/v1.0"`},
			{"graph_servers[1].oauth", "required: tenant_id, client_id, client_secret and mailbox of an app registration with the Microsoft Graph permission Mail.Send"},
			{"channels[0].mail_from", "not used with a Graph server: Exchange Online sends with the mailbox as the envelope sender; remove mail_from"},
			{"graph_servers[0].oauth.client_secret", "plain-text secrets are refused outside development: use kms:<...> (mailgate secret encrypt --kms KEY), " +
				"local:<...> (mailgate secret encrypt --local KEYRING), env:NAME or file:PATH"},
		},
		"bad-time-zone.yaml": {
			{"business_units[0].time_zone", `unknown time zone "CEST" (use an IANA name such as America/New_York)`},
		},
		"wrong-types.yaml": {
			{"admin.allowed_hosts", `"mailgate.example.com" is not valid here (line 13): the value must be a list`},
			{"smtp_servers[0].port", `"submission" is not valid here (line 24): the value must be a whole number`},
			{"smtp_servers[0].chunking", `"maybe" is not valid here (line 25): the value must be true or false`},
		},
		"duplicate-from.yaml": {
			{"channels[1].from", `Support@Example.com is already the address of channel "Support"; a From address picks exactly one channel`},
		},
		"signature-user-twice.yaml": {
			{"signatures[1].users[0]", `user "alice" is in signatures "short" and "long"; a user can have only one signature`},
		},
		"template-unknown-variable.yaml": {
			{"templates[0].html", "unknown variable .Colour (use .Content, .DisplayName, .AgentName, .Ticket, .Subject)"},
		},
		"hidden-ticket-ignore-in-reply-to.yaml": {
			{"channels[0].threading", "ignore_in_reply_to threads by the ticket number, which ticket.style hidden removes: " +
				"replies could not be threaded; show the ticket or prefer In-Reply-To"},
		},
		// The known-key list is checked below rather than spelt out, so that a new channel field does not
		// break this test.
		"unknown-key.yaml": {
			{"channels[0].outbound_flows", "unknown key (line 30); known keys here: "},
		},
	}

	files, err := filepath.Glob("testdata/broken/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	var want []string
	for n := range tests {
		want = append(want, n)
	}
	sort.Strings(want)
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Fatalf("testdata/broken holds %v, the table covers %v: every file needs its expected problems", names, want)
	}

	for name, want := range tests {
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) {
			c, err := Load(filepath.Join("testdata/broken", name))
			var ps Problems
			if c != nil || !errors.As(err, &ps) {
				t.Fatalf("Load = %v, %v; want no config and Problems", c != nil, err)
			}
			if len(ps) != len(want) {
				t.Fatalf("%d problems, want %d:\n%s", len(ps), len(want), ps.Error())
			}
			for i, w := range want {
				got := ps[i]
				if got.Path != w.Path {
					t.Errorf("problem %d path = %q, want %q", i, got.Path, w.Path)
				}
				if name == "unknown-key.yaml" {
					if !strings.HasPrefix(got.Msg, w.Msg) || !strings.Contains(got.Msg, "outbound_flow,") || !strings.Contains(got.Msg, "transport") {
						t.Errorf("problem %d = %q, want %q followed by the channel's keys", i, got.Msg, w.Msg)
					}
				} else if got.Msg != w.Msg {
					t.Errorf("problem %d message\n got: %s\nwant: %s", i, got.Msg, w.Msg)
				}
				if line := got.String(); line != got.Path+": "+got.Msg {
					t.Errorf("problem renders as %q", line)
				}
			}
		})
	}
}

// TestBrokenConfigsKeepSecretsOut: a problem with a secret field names its path, never its value.
func TestBrokenConfigsKeepSecretsOut(t *testing.T) {
	data, err := os.ReadFile("testdata/broken/plain-secret.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "hunter2-not-a-reference") {
		t.Fatal("plain-secret.yaml no longer holds the plain password this test looks for")
	}
	_, err = Parse(data)
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("Parse = %v: the plain-text password must be refused without being repeated", err)
	}
}

// TestBrokenConfigsBaseIsValid: the base the broken files share (unknown-key.yaml with its typo fixed)
// is valid, so every problem asserted above comes from a file's own mistake.
func TestBrokenConfigsBaseIsValid(t *testing.T) {
	data, err := os.ReadFile("testdata/broken/unknown-key.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fixed := strings.Replace(string(data), "outbound_flows:", "outbound_flow:", 1)
	if _, err := Parse([]byte(fixed)); err != nil {
		t.Fatalf("the base configuration of testdata/broken is not valid: %v", err)
	}
}
