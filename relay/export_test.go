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
