package oauth_test

import (
	"context"
	"fmt"
	"time"

	"github.com/mailgate/mailgate/auth/oauth"
	"github.com/mailgate/mailgate/kms"
)

// How cmd/mailgate wires a Microsoft 365 app-only credential: one Source per server, shared by
// every worker of that server's transport.
func ExampleNew() {
	src, err := oauth.New(oauth.Options{
		Server: "m365", Tenant: "contoso.onmicrosoft.com", ClientID: "11111111-2222-3333-4444-555555555555",
		ClientSecret: kms.NewSecret("resolved at config load"), Mailbox: "support@contoso.example",
		Flow: oauth.ClientCredentials,
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(src, oauth.RefreshMargin)
	_ = func(ctx context.Context) (string, error) { return src.Token(ctx) } // the SMTP transport's TokenSource
	_ = time.Second
	// Output: oauth.Source{server: m365, flow: client_credentials} 10m0s
}
