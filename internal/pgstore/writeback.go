package pgstore

import (
	"time"

	"github.com/jackc/pgx/v5"
)

// WriteBack is what became of a batch's rows, as the batch's transaction
// writes it before its commit. Rows it does not name stay as they were:
// pending, with no attempt spent.
type WriteBack struct {
	// The rows Kafka acknowledged and where each landed (parallel).
	SentIDs        []int64
	SentPartitions []int32
	SentOffsets    []int64
	// DeleteSent deletes the acknowledged rows instead of marking them
	// sent (Config.DeleteOnSend).
	DeleteSent bool
	Retry      []Retry      // failed rows to produce again later
	Escalate   []Escalation // failed rows past saving
	Now        *time.Time   // nil: the database clock
}

// Retry is a failed row that stays pending: it spends an attempt and waits
// Delay before the next.
type Retry struct {
	ID    int64
	Error string
	Delay time.Duration
}

// Escalation is a failed row that moves to stuck_messages, with its error
// and its error kind.
type Escalation struct {
	ID          int64
	Error, Kind string
}

// markSentQuery records where each row landed. The arrays are parallel.
// sent_at is when this statement ran, after Kafka's acknowledgement and just
// before the commit, not the batch transaction's start (now()), which can be
// many produce timeouts earlier: the daemon's verify finds rows by sent_at
// and must not miss those committed long after their transaction began.
const markSentQuery = `
UPDATE messages AS m
SET status = 'sent', sent_at = COALESCE(@now::timestamptz, statement_timestamp()),
    kafka_partition = u.kafka_partition, kafka_offset = u.kafka_offset
FROM unnest(@ids::bigint[], @partitions::int[], @offsets::bigint[]) AS u(id, kafka_partition, kafka_offset)
WHERE m.id = u.id`

// deleteSentQuery removes acknowledged rows when sent rows are not kept.
const deleteSentQuery = `DELETE FROM messages WHERE id = ANY($1::bigint[])`

// markFailedQuery leaves rows pending with their error and the time of their
// next attempt. The arrays are parallel; @delays_us holds delays in microseconds.
const markFailedQuery = `
UPDATE messages AS m
SET attempts = m.attempts + 1,
    first_error = COALESCE(m.first_error, u.last_error),
    last_error = u.last_error,
    next_attempt_at = COALESCE(@now::timestamptz, now()) + u.delay_us * interval '1 microsecond'
FROM unnest(@ids::bigint[], @errors::text[], @delays_us::bigint[]) AS u(id, last_error, delay_us)
WHERE m.id = u.id`

// escalateQuery moves rows to stuck_messages in one statement, so a row is
// always in exactly one of the two tables. The arrays are parallel; the
// failed attempt counts.
const escalateQuery = `
WITH moved AS (
    DELETE FROM messages AS m
    USING unnest(@ids::bigint[], @errors::text[], @kinds::text[]) AS u(id, last_error, error_kind)
    WHERE m.id = u.id
    RETURNING m.id, m.topic, m.key, m.payload, m.headers, m.created_at, m.attempts,
              m.first_error, u.last_error, u.error_kind, m.uuid,
              m.deliver_after, m.expires_at, m.partition
)
INSERT INTO stuck_messages (id, topic, key, payload, headers, created_at, attempts,
                            first_error, last_error, error_kind, escalated_at, uuid,
                            deliver_after, expires_at, partition)
SELECT id, topic, key, payload, headers, created_at, attempts + 1,
       COALESCE(first_error, last_error), last_error, error_kind, COALESCE(@now::timestamptz, now()), uuid,
       deliver_after, expires_at, partition
FROM moved`

// WriteBack records w for the batch's transaction: sent rows get their
// position (or are deleted), retried rows their error and next attempt
// time, and escalated rows move to stuck_messages. Commit sends it, with
// COMMIT, in one round trip.
func (b *BatchTx) WriteBack(w WriteBack) {
	switch {
	case len(w.SentIDs) == 0:
	case w.DeleteSent:
		b.queue("delete sent", deleteSentQuery, w.SentIDs)
	default:
		b.queue("mark sent", markSentQuery, pgx.NamedArgs{
			"ids": w.SentIDs, "partitions": w.SentPartitions, "offsets": w.SentOffsets, "now": w.Now})
	}
	if len(w.Retry) > 0 {
		ids := make([]int64, len(w.Retry))
		errs := make([]string, len(w.Retry))
		delays := make([]int64, len(w.Retry))
		for i, x := range w.Retry {
			ids[i], errs[i], delays[i] = x.ID, x.Error, x.Delay.Microseconds()
		}
		b.queue("mark failed", markFailedQuery, pgx.NamedArgs{
			"ids": ids, "errors": errs, "delays_us": delays, "now": w.Now})
	}
	if len(w.Escalate) > 0 {
		ids := make([]int64, len(w.Escalate))
		errs := make([]string, len(w.Escalate))
		kinds := make([]string, len(w.Escalate))
		for i, x := range w.Escalate {
			ids[i], errs[i], kinds[i] = x.ID, x.Error, x.Kind
		}
		b.queue("escalate", escalateQuery, pgx.NamedArgs{
			"ids": ids, "errors": errs, "kinds": kinds, "now": w.Now})
	}
}

// queue adds a statement of the write-back, named step in its error.
func (b *BatchTx) queue(step, sql string, args ...any) {
	if b.writes == nil {
		b.writes = &pgx.Batch{}
	}
	b.writes.Queue(sql, args...)
	b.steps = append(b.steps, step)
}
