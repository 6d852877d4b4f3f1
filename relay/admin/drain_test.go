package admin

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailgate/mailgate/relay/peertest"
)

// TestInstanceAndDrain: every answer names the instance; /drain needs the token, stops the intake once
// however often it is called, and from then on /readyz fails with "draining".
func TestInstanceAndDrain(t *testing.T) {
	var drains atomic.Int32
	s := New(Options{Gatherer: prometheus.NewRegistry(), Token: []byte(token), Queue: &fakeQueue{},
		Instance: "mg-east-1", Drain: func() { drains.Add(1) }})
	base := "http://" + serve(t, &s.listener)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get(InstanceHeader); got != "mg-east-1" {
		t.Errorf("%s = %q", InstanceHeader, got)
	}
	if code, body := peertest.HTTP(t, "GET", base+"/readyz", "", ""); code != 200 || !strings.HasPrefix(body, "instance mg-east-1\n") {
		t.Fatalf("/readyz = %d\n%s", code, body)
	}
	if code, _ := peertest.HTTP(t, "POST", base+"/drain", "", "wrong"); code != http.StatusUnauthorized || drains.Load() != 0 {
		t.Fatalf("drain without the token: %d, %d drains", code, drains.Load())
	}
	for range 2 {
		if code, body := peertest.HTTP(t, "POST", base+"/drain", "", token); code != 200 || strings.TrimSpace(body) != "draining" {
			t.Fatalf("drain: %d %q", code, body)
		}
	}
	if n := drains.Load(); n != 1 {
		t.Errorf("the intake was stopped %d times, want once", n)
	}
	if code, body := peertest.HTTP(t, "GET", base+"/readyz", "", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "FAIL draining") {
		t.Errorf("/readyz while draining = %d\n%s", code, body)
	}
}
