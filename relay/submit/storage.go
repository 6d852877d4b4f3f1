package submit

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

// errInsufficientStorage reports whether err is a full file system or an exhausted quota anywhere on
// the submission path (raw DATA file, spool draft, fsync at commit). Such a failure is not the client's
// and passes when space is freed: RFC 5321 §4.2.2's 452 "insufficient system storage", RFC 3463's
// 4.3.1 "mail system full".
func errInsufficientStorage(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// FreeSpace returns a readiness check that fails while the file system holding dir has less than min
// bytes available to mailgate, so a load balancer or orchestrator stops sending mail here before
// submissions start failing with 452 4.3.1. min <= 0 disables the check.
func FreeSpace(dir string, min int64) func(context.Context) error {
	return func(context.Context) error {
		if min <= 0 {
			return nil
		}
		free, err := freeBytes(dir)
		if err != nil {
			return fmt.Errorf("free space of %s: %w", dir, err)
		}
		if free < min {
			return fmt.Errorf("%s has %d MiB free, below the threshold of %d MiB (spool.min_free_bytes): free disk space",
				dir, free>>20, min>>20)
		}
		return nil
	}
}
