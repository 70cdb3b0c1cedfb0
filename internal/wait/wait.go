// Package wait holds the one interruptible pause the relay's retry loops
// share, so each loop does not write its own timer select.
package wait

import (
	"context"
	"time"
)

// Sleep waits d, or until ctx ends, and then returns ctx's error. The timer
// is stopped either way, so a loop that is cancelled leaves none behind.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
