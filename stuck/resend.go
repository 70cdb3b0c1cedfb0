package stuck

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SentFilter selects sent rows (those still retained: RELAY_SENT_RETENTION).
// Zero fields match everything.
type SentFilter struct {
	IDs   []int64   // nil: any id
	Topic string    // empty: any topic
	Since time.Time // sent at or after; zero: any time
}

// SentRow is a sent row as resend selects and confirms it.
type SentRow struct {
	ID        int64
	Topic     string
	Key       []byte
	SentAt    time.Time
	Partition int32
	Offset    int64
}

// SentRows returns every sent row that matches f, in id order.
func SentRows(ctx context.Context, q Querier, f SentFilter) ([]SentRow, error) {
	var topic *string
	if f.Topic != "" {
		topic = &f.Topic
	}
	var since *time.Time
	if !f.Since.IsZero() {
		since = &f.Since
	}
	rows, err := q.Query(ctx, sentRowsQuery, f.IDs, topic, since)
	if err != nil {
		return nil, fmt.Errorf("select sent rows: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SentRow, error) {
		var s SentRow
		err := r.Scan(&s.ID, &s.Topic, &s.Key, &s.SentAt, &s.Partition, &s.Offset)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("select sent rows: %w", err)
	}
	return out, nil
}

// Resend makes the sent rows of ids pending again, with their attempts and
// errors reset, so that the relay publishes them once more: with the same
// outbox-id, and in id order within their key, like any pending row (a
// resent row goes before the later pending rows of its key, and after the
// earlier ones). It returns the ids it changed; an id that is not a sent row
// (pending, stuck, deleted by retention) is left out. Run it in a
// transaction with Audit.
func Resend(ctx context.Context, q Querier, ids []int64) ([]int64, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return changedIDs(ctx, q, "resend", resendQuery, ids)
}

const sentRowsQuery = `
SELECT id, topic, key, sent_at, kafka_partition, kafka_offset FROM messages
WHERE status = 'sent'
  AND ($1::bigint[] IS NULL OR id = ANY($1))
  AND ($2::text IS NULL OR topic = $2)
  AND ($3::timestamptz IS NULL OR sent_at >= $3)
ORDER BY id`

// resendQuery clears the position with the status: the row is pending
// again, as if never delivered (messages_sent_has_position allows it). A
// resend goes now: deliver_after and expires_at are cleared; the row keeps
// its partition, so the copy lands beside the first.
const resendQuery = `
UPDATE messages
SET status = 'pending', attempts = 0, next_attempt_at = now(), first_error = NULL, last_error = NULL,
    deliver_after = NULL, expires_at = NULL,
    sent_at = NULL, kafka_partition = NULL, kafka_offset = NULL,
    uuid = COALESCE(uuid, gen_random_uuid()) -- a row sent before migration 00002 has none
WHERE id = ANY($1) AND status = 'sent'
RETURNING id`
