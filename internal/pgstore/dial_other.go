//go:build !linux

package pgstore

import "syscall"

// setUserTimeout does nothing outside Linux: the relay runs in a Linux
// container; elsewhere (a developer's laptop) the kernel's defaults apply.
func setUserTimeout(syscall.RawConn, int) error { return nil }
