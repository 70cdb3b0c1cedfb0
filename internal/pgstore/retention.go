package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// pruneQuery deletes up to @batch sent rows older than @retention_us
// microseconds, oldest first, through the partial index on sent_at. Small
// batches keep each transaction short; pending rows are never touched, so
// delivery does not wait for it. Rows another relay's prune is deleting are
// skipped, not waited for, so the relays of one outbox prune side by side.
const pruneQuery = `
DELETE FROM messages WHERE id IN (
    SELECT id FROM messages
    WHERE status = 'sent' AND sent_at < COALESCE(@now::timestamptz, now()) - @retention_us * interval '1 microsecond'
    ORDER BY sent_at
    LIMIT @batch
    FOR UPDATE SKIP LOCKED)`

// pruneBatch is how many sent rows one delete statement removes.
const pruneBatch = 1000

// PruneSent deletes the sent rows older than retention, a batch at a time,
// until none is left, and returns how many it deleted. now is a fixed "now"
// for tests; nil is the database clock.
func (s *Store) PruneSent(ctx context.Context, retention time.Duration, now *time.Time) (int64, error) {
	var total int64
	for {
		tag, err := s.pool.Exec(ctx, pruneQuery, pgx.NamedArgs{
			"retention_us": retention.Microseconds(), "batch": pruneBatch, "now": now})
		if err != nil {
			return total, fmt.Errorf("prune sent rows: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < pruneBatch {
			return total, nil
		}
	}
}
