package relay

import (
	"context"
	"time"

	"github.com/outboxrelay/relay/internal/wait"
)

// pruneSentRows deletes sent rows past the retention window
// (pgstore.Store.PruneSent) every tenth of the window, at most every minute.
func (r *Relay) pruneSentRows(ctx context.Context) {
	every := min(max(r.cfg.SentRetention/10, time.Second), time.Minute)
	wait.Every(ctx, every, func(ctx context.Context) {
		n, err := r.store.PruneSent(ctx, r.cfg.SentRetention, nil)
		switch {
		case err != nil && ctx.Err() == nil:
			r.logger.Warn("prune_failed", "error", err)
		case n > 0:
			r.logger.Debug("pruned_sent_rows", "count", n)
		}
	})
}
