package relay

import (
	"context"
	"time"
)

// maxLoopBackoff caps how long the delivery loop and the listener wait after
// consecutive failures of their own (Postgres or Kafka unreachable). The
// retry policy's Max (RELAY_RETRY_MAX, default 5 minutes) is meant to space
// out one row's attempts; applied to the loop it let a relay sit idle for
// minutes after an outage had ended, since a loop that is backing off is not
// registered for wake-ups.
const maxLoopBackoff = 5 * time.Second

// loopBackoff is how long to wait after the given number of consecutive
// loop failures: the retry policy's backoff, capped at maxLoopBackoff.
func (r *Relay) loopBackoff(failures int) time.Duration {
	return min(r.cfg.Retry.Next(failures), maxLoopBackoff)
}

// keepSession runs once, a session on a connection of its own (the
// listener's, the instance slot's), until ctx ends, and again after every
// failure, backing off while it fails before calling connected. failed
// names the warning logged for each failure.
func (r *Relay) keepSession(ctx context.Context, failed string, once func(ctx context.Context, connected func()) error) {
	failures := 0
	for ctx.Err() == nil {
		err := once(ctx, func() { failures = 0 })
		if ctx.Err() != nil {
			return
		}
		failures++
		wait := r.loopBackoff(failures)
		r.logger.Warn(failed, "error", err, "retry_in", wait.String())
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
