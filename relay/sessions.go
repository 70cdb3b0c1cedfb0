package relay

import (
	"context"

	"github.com/outboxrelay/relay/internal/wait"
)

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
		backoff := r.loopBackoff(failures)
		r.logger.Warn(failed, "error", err, "retry_in", backoff.String())
		if wait.Sleep(ctx, backoff) != nil {
			return
		}
	}
}

// listen keeps a dedicated connection LISTENing on the schema's wake-up
// channel and pokes the delivery loop on every notification. Notifications
// sent while the connection was down are lost, so after every (re)connect it
// also pokes once: a full poll covers the gap.
func (r *Relay) listen(ctx context.Context) {
	r.keepSession(ctx, "listen_failed", func(ctx context.Context, connected func()) error {
		return r.store.Listen(ctx, func() { connected(); r.poke() }, r.poke)
	})
}
