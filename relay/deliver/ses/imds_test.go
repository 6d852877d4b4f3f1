package ses

import (
	"context"
	"testing"
	"time"

	"github.com/mailgate/mailgate/relay"
)

// TestNoCredentialsFailsFast: with an endpoint override and no credentials anywhere, the EC2 metadata
// service is not consulted (it would hold each attempt for seconds off EC2): Deliver fails at once with
// a temporary credentials error and an alert, never a timeout.
func TestNoCredentialsFailsFast(t *testing.T) {
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
		"AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
		"AWS_EC2_METADATA_DISABLED"} {
		t.Setenv(k, "")
	}
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("AWS_CONFIG_FILE", dir+"/config")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", dir+"/credentials")
	f := newFakeSES(t)
	tr, err := New(context.Background(), Options{Region: "eu-west-1", Endpoint: f.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err = tr.Deliver(ctx, testMessage(composed("s", "b"), "a@example.org")).Errs[0]
	re, ok := relay.AsError(err)
	if !ok || relay.IsPermanent(err) || re.Reason != ReasonAuth {
		t.Fatalf("want a temporary %s error, got %v", ReasonAuth, err)
	}
	if len(f.requests()) != 0 {
		t.Fatal("an unsigned request reached SES")
	}
	if p := tr.Problems(); len(p) != 1 || p[0].Reason != ReasonAuth {
		t.Fatalf("problems %v", p)
	}
}
