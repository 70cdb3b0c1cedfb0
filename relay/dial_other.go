//go:build !linux

package relay

import (
	"syscall"
	"time"
)

// setUserTimeout does nothing outside Linux: the relay runs in a Linux
// container; elsewhere (a developer's laptop) the kernel's defaults apply.
func setUserTimeout(syscall.RawConn, time.Duration) error { return nil }
