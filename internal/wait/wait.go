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

// Every runs job once per interval until ctx ends, the first time one
// interval after the call. It is the loop of the relay's periodic services
// (the lag watch, the prune of sent rows, the periodic verify): each service
// is its job, named after what it does, and none writes its own ticker. A
// job that outlasts the interval delays the next run; runs never overlap.
func Every(ctx context.Context, interval time.Duration, job func(context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if ctx.Err() != nil {
			return // a tick and the end came together: select chose the tick
		}
		job(ctx)
	}
}
