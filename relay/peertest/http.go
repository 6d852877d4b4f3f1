package peertest

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// HTTP sends one request to an operator listener (admin, events) with the given Host header ("" = the
// URL's) and bearer token ("" = none), and returns the status and the body.
func HTTP(t testing.TB, method, url, host, bearer string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
