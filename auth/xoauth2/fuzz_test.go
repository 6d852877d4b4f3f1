package xoauth2_test

import (
	"testing"

	"github.com/mailgate/mailgate/auth/xoauth2"
)

// FuzzParseInitialResponse checks that the server-side parser never panics and that whatever it accepts
// survives a round trip through InitialResponse.
func FuzzParseInitialResponse(f *testing.F) {
	f.Add([]byte("user=a@b.example\x01auth=Bearer tok\x01\x01"))
	f.Add([]byte("user=a\x01auth=bearer  t\x01\x01"))
	f.Add([]byte("user=\x01auth=\x01\x01"))
	f.Add([]byte("\x01\x01"))
	f.Fuzz(func(t *testing.T, ir []byte) {
		user, tok, err := xoauth2.ParseInitialResponse(ir)
		if err != nil {
			return
		}
		u2, t2, err := xoauth2.ParseInitialResponse(xoauth2.InitialResponse(user, tok))
		if err != nil || u2 != user || t2 != tok {
			t.Fatalf("round trip of %q: %q %q %v", ir, u2, t2, err)
		}
		s := &xoauth2.Server{Verify: func(u, k string) error {
			if u != user || k != tok {
				t.Fatalf("verifier saw %q %q, parser gave %q %q", u, k, user, tok)
			}
			return nil
		}}
		if _, done, err := s.Next(ir); !done || err != nil {
			t.Fatalf("server refused a parsable response %q: %v", ir, err)
		}
	})
}
