//go:build !unix

package submit

import "errors"

// freeBytes is not implemented here: the readiness check reports it rather than passing silently.
func freeBytes(string) (int64, error) { return 0, errors.New("free space unknown on this platform") }
