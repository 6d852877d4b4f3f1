package submit

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// rawFile opens the file a submitted message is streamed into before composition. On Linux it is an
// O_TMPFILE: a file with no name, so no directory entry is created or removed per message, and it can
// never be left behind by a crash. Filesystems without O_TMPFILE get a named temporary file, unlinked
// at once.
func rawFile(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), dir+"/(submission)"), nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EINVAL) {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return namelessTemp(dir)
}
