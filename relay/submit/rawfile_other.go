//go:build !linux

package submit

import "os"

// rawFile opens the file a submitted message is streamed into before composition: a temporary file,
// unlinked at once so it can never be left behind.
func rawFile(dir string) (*os.File, error) { return namelessTemp(dir) }
