package config

import (
	"os"
	"strings"
	"testing"
)

// TestStoreChoice: store.path or store.postgres, exactly one; the DSN is a secret reference (a plain
// one, which may hold a password, is refused without being repeated); Kind names the choice without
// the DSN.
func TestStoreChoice(t *testing.T) {
	data, err := os.ReadFile("testdata/broken/unknown-key.yaml")
	if err != nil {
		t.Fatal(err)
	}
	base := strings.Replace(string(data), "outbound_flows:", "outbound_flow:", 1)
	const pathStore = "store:\n  path: /var/lib/mailgate/mailgate.db\n"
	if !strings.Contains(base, pathStore) {
		t.Fatal("the base configuration no longer has the store section this test replaces")
	}
	with := func(store string) (*Config, error) { return Parse([]byte(strings.Replace(base, pathStore, store, 1))) }

	c, err := with("store:\n  postgres: env:MAILGATE_PG_DSN\n")
	if err != nil {
		t.Fatalf("postgres from env: %v", err)
	}
	if k := c.Store.Kind(); k != "postgresql (DSN from env:MAILGATE_PG_DSN)" {
		t.Errorf("Kind = %q", k)
	}
	c, _ = with(pathStore)
	if k := c.Store.Kind(); k != "sqlite /var/lib/mailgate/mailgate.db" {
		t.Errorf("Kind = %q", k)
	}
	c, err = with("store:\n  postgres: kms:AQICAHh=\n")
	if err != nil || c.Store.Kind() != "postgresql (DSN sealed with kms)" {
		t.Errorf("sealed DSN: %v %q", err, c.Store.Kind())
	}

	for store, want := range map[string]string{
		"store: {}\n": "store: required: store.path (a SQLite file",
		"store:\n  path: /x.db\n  postgres: env:PG\n":                  "store: set store.path (SQLite) or store.postgres (PostgreSQL), not both",
		"store:\n  postgres: postgres://mg:hunter2@db:5432/mailgate\n": "store.postgres: plain-text secrets are refused outside development",
	} {
		_, err := with(store)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", store, err, want)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the DSN's password is in the problem: %v", err)
		}
	}
}
