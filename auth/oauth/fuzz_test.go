package oauth

import (
	"context"
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
)

func FuzzDescribeToken(f *testing.F) {
	enc := base64.RawURLEncoding.EncodeToString
	f.Add("a.b.c")
	f.Add("")
	f.Add(enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(`{"upn":"x@y","aud":"https://outlook.office.com","scp":"SMTP.Send","exp":1900000000}`)) + ".sig")
	f.Add("h." + enc([]byte(`{"aud":["a","b"],"roles":"SMTP.SendAsApp","exp":"12"}`)) + ".s")
	f.Add("h." + enc([]byte(`{"exp":1e300,"roles":[1,2]}`)) + ".s")
	f.Fuzz(func(t *testing.T, token string) {
		info := DescribeToken(token)
		if !info.JWT {
			if info.Account != "" || len(info.Audience) > 0 || !info.Expiry.IsZero() {
				t.Fatal("claims from a token that did not decode")
			}
			return
		}
		// Never the token itself, nor its signature, in what is displayed.
		out := info.String()
		if len(token) > 16 && strings.Contains(out, token) {
			t.Fatal("DescribeToken output contains the token")
		}
		if parts := strings.Split(token, "."); len(parts[2]) > 16 && strings.Contains(out, parts[2]) {
			t.Fatal("DescribeToken output contains the signature")
		}
		if !info.Expiry.IsZero() && info.Expiry.Year() > 5000 {
			t.Fatalf("absurd expiry %v", info.Expiry)
		}
	})
}

func FuzzParsePastedRedirect(f *testing.F) {
	f.Add("http://localhost:8765/callback?code=0.AAAA-secret-code&state=STATE")
	f.Add("code=abc&state=STATE")
	f.Add("?code=abc&state=STATE&state=STATE")
	f.Add("http://localhost/cb#code=abcdef&state=STATE")
	f.Add("http://localhost/cb?error=access_denied&error_description=AADSTS65004%3A+User+declined&state=STATE")
	f.Add("http://[::1%zz]/?code=secretcode")
	f.Add("%zz")
	f.Add("localhost:8765/callback?code=abc&state=STATE")
	f.Fuzz(func(t *testing.T, raw string) {
		a := &Authorization{State: "STATE"}
		code, err := a.ParsePastedRedirect(raw)
		if err == nil {
			if code == "" {
				t.Fatal("success without a code")
			}
			q, perr := redirectParams(raw)
			if perr != nil || q.Get("state") != "STATE" || q.Get("error") != "" {
				t.Fatalf("accepted %q without the right state", raw)
			}
			return
		}
		// The error never repeats the code (unless the provider's own error text holds it).
		q, perr := redirectParams(raw)
		var c string
		if perr == nil {
			if q.Get("error") != "" {
				return
			}
			c = q.Get("code")
		} else if i := strings.Index(raw, "code="); i >= 0 {
			c, _, _ = strings.Cut(raw[i+5:], "&")
			c, _ = url.QueryUnescape(c)
		}
		if len(c) >= 8 && strings.Contains(err.Error(), c) {
			t.Fatalf("error %q repeats the code", err)
		}
	})
}

func BenchmarkTokenCached(b *testing.B) {
	e := &env{clock: newFakeClock(), store: newMemStore(), logs: &logBuffer{}}
	e.reg, e.metrics = newMetrics()
	mock := startMockForBench(b)
	s, err := New(e.options(ClientCredentials, mock))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Token(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Token(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
