package pgstore

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// setUserTimeout sets the socket's TCP_USER_TIMEOUT: how many milliseconds
// sent data may stay unacknowledged before the kernel closes the connection.
func setUserTimeout(c syscall.RawConn, ms int) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, ms)
	}); err != nil {
		return err
	}
	return serr
}
