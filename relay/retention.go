package relay

import (
	"context"
	"fmt"
	"time"
)

// pruneQuery deletes up to $2 sent rows older than $1 microseconds, oldest
// first, through the partial index on sent_at. Small batches keep each
// transaction short; pending rows are never touched, so delivery does not
// wait for it. Rows another relay's prune is deleting are skipped, not
// waited for, so the relays of one outbox prune side by side.
const pruneQuery = `
DELETE FROM messages WHERE id IN (
    SELECT id FROM messages
    WHERE status = 'sent' AND sent_at < COALESCE($3::timestamptz, now()) - $1 * interval '1 microsecond'
    ORDER BY sent_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED)`

// pruneBatch is how many sent rows one delete statement removes.
const pruneBatch = 1000

// prune deletes sent rows past the retention window, a batch at a time,
// until none is left. It returns how many it deleted.
func (r *Relay) prune(ctx context.Context, now *time.Time) (int64, error) {
	var total int64
	for {
		tag, err := r.pool.Exec(ctx, pruneQuery, r.cfg.SentRetention.Microseconds(), pruneBatch, now)
		if err != nil {
			return total, fmt.Errorf("prune sent rows: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < pruneBatch {
			return total, nil
		}
	}
}

// pruneLoop runs prune every tenth of the retention window, at most every
// minute.
func (r *Relay) pruneLoop(ctx context.Context) {
	every := min(max(r.cfg.SentRetention/10, time.Second), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := r.prune(ctx, nil)
		switch {
		case err != nil && ctx.Err() == nil:
			r.logger.Warn("prune_failed", "error", err)
		case n > 0:
			r.logger.Debug("pruned_sent_rows", "count", n)
		}
	}
}
