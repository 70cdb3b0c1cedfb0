package relay

// The relay's SQL. Names are unqualified: the pool's search_path is the
// configured schema, so these stay constant whatever the schema is called.

// lockFirstQuery locks the $1 oldest pending rows that are not locked by
// others, as a naive claim would, skipping only the rows of keys this relay
// has in flight ($2, $3: topics and keys; those rows are held behind the
// batch in flight). Which of them may go is decided with heldQuery (see
// claimLockFirst). Rows it locks but the batch does not produce stay
// untouched until the batch ends.
//
// The last column is each row's size: the bytes of its payload, key and
// headers. The payload and headers come back only for rows of at most $5
// bytes (the batch's byte bound over its row bound, 16 KiB by default: a
// batch of such rows can never pass the byte bound); those of larger rows
// are read afterwards, and only if they fit in the batch (see boundBytes).
// The sizes cost no detoasting (octet_length reads the TOAST pointer), and
// no window or sort over the locked rows: that running sum is the client's.
const lockFirstQuery = `
SELECT id, topic, key,
       CASE WHEN ` + rowSize + ` <= $5::bigint THEN payload END,
       CASE WHEN ` + rowSize + ` <= $5::bigint THEN headers END,
       uuid, attempts, created_at, deliver_after, expires_at, partition,
       COALESCE(expires_at <= COALESCE($4::timestamptz, now()), false),
       ` + dueAt + ` <= COALESCE($4::timestamptz, now()),
       ` + rowSize + `
FROM messages
WHERE status = 'pending'
  AND (key IS NULL OR (topic, key) NOT IN (
        SELECT f.topic, f.key FROM unnest($2::text[], $3::bytea[]) AS f(topic, key)))
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED`

// rowSize is the size of a row of messages as the byte bound counts it
// (unqualified: claimQuery joins messages with a list of ids).
const rowSize = `(COALESCE(octet_length(payload), 0) + COALESCE(octet_length(key), 0) + pg_column_size(headers))`

// largeRowsQuery reads the payload and headers of claimed rows larger than
// the claim returns them (see lockFirstQuery). The batch holds their locks.
const largeRowsQuery = `SELECT id, payload, headers FROM messages WHERE id = ANY($1::bigint[])`

// dueAt is when a pending row may be produced: at its next attempt, and
// not before its deliver_after. A row whose expires_at comes before its
// deliver_after can never be delivered: it is due at once, to be escalated
// (see expiredError). A row not due holds back the later rows of its key.
const dueAt = `GREATEST(next_attempt_at, CASE WHEN expires_at < deliver_after THEN NULL ELSE deliver_after END)`

// heldQuery lists what holds back rows that lockFirstQuery locked: every
// pending row of their keys ($3, $4) below id $1 that is not one of them
// ($2), that is rows locked by others or that became visible since (the
// lower bound keeps the scan off the sent history below the oldest pending
// row); and, unless $5 is true, the oldest stuck row of each of their keys.
// Rows of other keys, such as those of this relay's batches in flight or of
// other relays' batches, are left out: they hold back nothing here. The key
// test is written NOT … NOT IN (the keys are never NULL) so that it stays a
// hashed filter on the scan by id: as an IN, generic plans probe each key's
// index entries instead, and those walk the key's sent rows until vacuum
// removes them. It runs after the lock,
// in a newer snapshot: a row it no longer sees pending was sent or moved
// since, and one it sees newly pending holds its key (conservative either
// way); a stuck row requeued in between is seen as pending here.
const heldQuery = `
SELECT o.topic, o.key, o.id FROM messages o
WHERE o.status = 'pending' AND o.key IS NOT NULL AND o.id < $1
  AND o.id >= (SELECT min(id) FROM messages WHERE status = 'pending')
  AND o.id NOT IN (SELECT unnest($2::bigint[]))
  AND NOT ((o.topic, o.key) NOT IN (SELECT f.topic, f.key FROM unnest($3::text[], $4::bytea[]) AS f(topic, key)))
UNION ALL
SELECT s.topic, s.key, min(s.id) FROM stuck_messages s
WHERE NOT $5::boolean
  AND (s.topic, s.key) IN (SELECT f.topic, f.key FROM unnest($3::text[], $4::bytea[]) AS f(topic, key))
GROUP BY s.topic, s.key`

// claimQuery is the claim's fallback when held rows fill lockFirstQuery's
// page (see claim). It locks up to $1 due pending rows in id order, skipping
// rows other relays hold, and numbers each keyed row's place in its key's
// chain. A
// keyed row qualifies only when every earlier pending row of its topic and
// key is in this batch, up to $5 rows a key: an earlier row in flight
// elsewhere or waiting for a retry holds all later rows of its key. Unless
// $3 is true, an earlier stuck row of the key holds them too (strict order).
//
// It reads the first $4 pending rows in id order (the window) and ranks the
// rows of each key in it. Because the window is a prefix of the pending
// rows, every earlier pending row of a key is in it, so a row's rank is its
// place among its key's pending rows, with no probe of the key's history:
// the probe the older claim ran for every candidate walked index entries of
// sent rows until vacuum removed them, and ran again for every row already
// locked by a batch in flight. A row qualifies when it and every earlier row
// of its key in the window are due. The chosen rows are then locked in id
// order until $1 are held (a nested loop over the sorted ids, so locking
// stops early); rows locked by others are skipped, which can break a chain:
// the caller keeps a row only when the row ranked before it is in the batch
// (see claimWindow), and produces each rank as a wave after the previous
// rank was acknowledged (see produceWaves). $6 lists the rows of the
// caller's own batches in flight: they and the rows behind them are not
// tried at all, so the next batch does not lock rows it would only drop.
//
// Like lockFirstQuery, it returns the payload and headers only of rows of
// at most $7 bytes, and each row's size in the last column.
//
// The column before the size tells how many rows the window held: when it was full and
// too few rows qualified, the caller widens it (see claim), so a long run of
// held rows can never starve rows of other keys behind it.
//
// $2 is "now", NULL for the database clock; tests pass a fixed time.
const claimQuery = `
WITH window_rows AS MATERIALIZED (
    SELECT id, topic, key, ` + dueAt + ` AS next_attempt_at FROM messages
    WHERE status = 'pending'
    ORDER BY id
    LIMIT $4
), chosen AS MATERIALIZED (
    SELECT id, rank FROM (
        SELECT id,
               CASE WHEN key IS NULL THEN 1 ELSE row_number() OVER w END AS rank,
               CASE WHEN key IS NULL THEN next_attempt_at ELSE max(next_attempt_at) OVER w END AS due_at,
               CASE WHEN key IS NULL THEN flying ELSE bool_or(flying) OVER w END AS behind_flying
        FROM (SELECT *, id IN (SELECT unnest($6::bigint[])) AS flying FROM window_rows) f
        WINDOW w AS (PARTITION BY topic, key ORDER BY id ROWS UNBOUNDED PRECEDING)) r
    WHERE due_at <= COALESCE($2::timestamptz, now()) AND rank <= $5 AND NOT behind_flying
)
SELECT m.id, m.topic, m.key,
       CASE WHEN ` + rowSize + ` <= $7::bigint THEN m.payload END,
       CASE WHEN ` + rowSize + ` <= $7::bigint THEN m.headers END,
       m.uuid, m.attempts, m.created_at, m.deliver_after, m.expires_at, m.partition,
       COALESCE(m.expires_at <= COALESCE($2::timestamptz, now()), false),
       c.rank, (SELECT count(*) FROM window_rows),
       ` + rowSize + `
FROM (SELECT id, rank FROM chosen ORDER BY id) c
JOIN messages m ON m.id = c.id
WHERE m.status = 'pending'
  AND (m.key IS NULL OR $3::boolean
       OR NOT EXISTS (SELECT 1 FROM stuck_messages)
       OR NOT EXISTS (
            SELECT 1 FROM stuck_messages s
            WHERE s.topic = m.topic AND s.key = m.key AND s.id < m.id))
ORDER BY c.id
LIMIT $1
FOR UPDATE OF m SKIP LOCKED`

// batchSettingsQuery sets up a batch's transaction (claimLockFirst sends it
// with the lock).
//
// Asynchronous commit: the batch commits without waiting for its WAL flush.
// If Postgres crashes before the flush, the batch is lost as a whole and its
// rows are pending again, to be produced again (duplicates with the same
// outbox-id, never a loss). Commits are ordered in the WAL, so a later batch
// of a key is never kept while an earlier one is lost.
//
// $1: the relay's stall bound in ms (see stall.go), as the transaction's
// idle-in-transaction timeout and TCP user timeout, so that a relay that
// froze or was cut off lets go of its rows.
const batchSettingsQuery = `
SELECT set_config('synchronous_commit', 'off', true),
       set_config('idle_in_transaction_session_timeout', $1, true),
       set_config('tcp_user_timeout', $1, true)`

// windowFullQuery tells whether at least $1 rows are pending: whether a claim
// that found nothing had a full window.
const windowFullQuery = `SELECT count(*) = $1 FROM (SELECT 1 FROM messages WHERE status = 'pending' LIMIT $1) w`

// markSentQuery records where each row landed. The arrays are parallel.
// sent_at is when this statement ran, after Kafka's acknowledgement and just
// before the commit, not the batch transaction's start (now()), which can be
// many produce timeouts earlier: the daemon's verify finds rows by sent_at
// and must not miss those committed long after their transaction began.
const markSentQuery = `
UPDATE messages AS m
SET status = 'sent', sent_at = COALESCE($4::timestamptz, statement_timestamp()),
    kafka_partition = u.kafka_partition, kafka_offset = u.kafka_offset
FROM unnest($1::bigint[], $2::int[], $3::bigint[]) AS u(id, kafka_partition, kafka_offset)
WHERE m.id = u.id`

// deleteSentQuery removes acknowledged rows when sent rows are not kept.
const deleteSentQuery = `DELETE FROM messages WHERE id = ANY($1::bigint[])`

// markFailedQuery leaves rows pending with their error and the time of their
// next attempt. The arrays are parallel; $3 holds delays in microseconds.
const markFailedQuery = `
UPDATE messages AS m
SET attempts = m.attempts + 1,
    first_error = COALESCE(m.first_error, u.last_error),
    last_error = u.last_error,
    next_attempt_at = COALESCE($4::timestamptz, now()) + u.delay_us * interval '1 microsecond'
FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS u(id, last_error, delay_us)
WHERE m.id = u.id`

// escalateQuery moves rows to stuck_messages in one statement, so a row is
// always in exactly one of the two tables. The arrays are parallel; the
// failed attempt counts.
const escalateQuery = `
WITH moved AS (
    DELETE FROM messages AS m
    USING unnest($1::bigint[], $2::text[], $3::text[]) AS u(id, last_error, error_kind)
    WHERE m.id = u.id
    RETURNING m.id, m.topic, m.key, m.payload, m.headers, m.created_at, m.attempts,
              m.first_error, u.last_error, u.error_kind, m.uuid,
              m.deliver_after, m.expires_at, m.partition
)
INSERT INTO stuck_messages (id, topic, key, payload, headers, created_at, attempts,
                            first_error, last_error, error_kind, escalated_at, uuid,
                            deliver_after, expires_at, partition)
SELECT id, topic, key, payload, headers, created_at, attempts + 1,
       COALESCE(first_error, last_error), last_error, error_kind, COALESCE($4::timestamptz, now()), uuid,
       deliver_after, expires_at, partition
FROM moved`

// declareIdleQuery asks inserts to notify for the next $1 milliseconds of
// the database clock, the one the trigger reads.
const declareIdleQuery = `SELECT setval('relay_idle_until', (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $1)`

// openTransactionsQuery lists the transactions that have written something
// and not ended, by the lock every transaction holds on its own id. Run after
// declareIdleQuery, it names every transaction that may have inserted
// without seeing the registration. (pg_snapshot_xip would miss those at or
// above the snapshot's xmax; pg_locks is readable by every role, unlike
// pg_stat_activity's backend_xid.)
const openTransactionsQuery = `
SELECT COALESCE(array_agg(transactionid::text), '{}') FROM pg_locks
WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted`

// stillOpenQuery keeps those of $1 that have not ended.
const stillOpenQuery = `
SELECT COALESCE(array_agg(x), '{}') FROM unnest($1::text[]) x
WHERE x IN (SELECT transactionid::text FROM pg_locks
            WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted)`

// declareBusyQuery stops notifications. setval is not transactional: it
// takes effect at once, whatever the transaction it runs in does later.
const declareBusyQuery = `SELECT setval('relay_idle_until', 1)`
