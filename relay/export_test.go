package relay

import (
	"context"
	"time"
)

// DeliverBatch exposes one loop iteration to the external tests, with a
// fixed "now" (nil for the database clock).
func (r *Relay) DeliverBatch(ctx context.Context, now *time.Time) (int, error) {
	return r.deliverBatch(ctx, now)
}

// Prune exposes one retention pass with a fixed "now".
func (r *Relay) Prune(ctx context.Context, now *time.Time) (int64, error) {
	return r.prune(ctx, now)
}

// ClaimAndRelease claims one batch as the loop would and rolls it back, so a
// benchmark can claim the same rows again: how many rows it locked.
func (r *Relay) ClaimAndRelease(ctx context.Context) (int, error) {
	b, err := r.claimBatch(ctx, nil)
	if err != nil || b == nil {
		return 0, err
	}
	defer b.cancel()
	n := len(b.rows)
	return n, b.tx.Rollback(ctx)
}
