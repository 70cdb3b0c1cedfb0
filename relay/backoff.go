package relay

import "time"

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
