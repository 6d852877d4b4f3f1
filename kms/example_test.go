package kms_test

import (
	"context"
	"fmt"

	"github.com/mailgate/mailgate/kms"
)

// A resolved secret prints as [redacted] everywhere; Reveal is the only way to the value.
func ExampleResolver_Resolve() {
	r := &kms.Resolver{LookupEnv: func(string) (string, bool) { return "hunter2", true }}
	s, err := r.Resolve(context.Background(), "env:SMTP_PASSWORD")
	if err != nil {
		panic(err)
	}
	fmt.Println(s, len(s.Reveal()))
	_, err = r.Resolve(context.Background(), "hunter2")
	fmt.Println(err != nil)
	// Output:
	// [redacted] 7
	// true
}
