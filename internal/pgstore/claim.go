package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// lockFirstQuery locks the @limit oldest pending rows that are not locked by
// others, as a naive claim would, skipping only the rows of keys the relay
// has in flight (@flying_topics, @flying_keys; those rows are held behind
// the batch in flight). Which of them may go is decided with heldQuery (see
// claimLockFirst). Rows it locks but the batch does not produce stay
// untouched until the batch ends.
//
// @upto bounds the scan while batches are in flight (see ClaimParams.upto):
// the key filter is not an index condition, so behind a deep backlog of
// few keys, all in flight, the scan would otherwise read every pending row
// to lock nothing. The lower bound, the oldest pending row, is there for
// the planner: with a range of ids, the primary key serves it as well as
// messages_pending_idx, and while the statistics still count the rows
// sent since as pending (a backlog being drained), the planner may take
// it, and would then read every sent row below the range.
//
// The last column is each row's size: the bytes of its payload, key and
// headers. The payload and headers come back only for rows of at most
// @small_row bytes (the batch's byte bound over its row bound, 16 KiB by default: a
// batch of such rows can never pass the byte bound); those of larger rows
// are read afterwards, and only if they fit in the batch (see readLarge).
// The sizes cost no detoasting (octet_length reads the TOAST pointer), and
// no window or sort over the locked rows: that running sum is the client's.
const lockFirstQuery = `
SELECT id, topic, key,
       CASE WHEN ` + rowSize + ` <= @small_row::bigint THEN payload END,
       CASE WHEN ` + rowSize + ` <= @small_row::bigint THEN headers END,
       uuid, attempts, created_at, deliver_after, expires_at, partition,
       COALESCE(expires_at <= COALESCE(@now::timestamptz, now()), false),
       ` + dueAt + ` <= COALESCE(@now::timestamptz, now()),
       ` + rowSize + `
FROM messages
WHERE status = 'pending'
  AND id >= CASE WHEN @upto::bigint IS NULL THEN 0 ELSE (SELECT min(id) FROM messages WHERE status = 'pending') END
  AND id <= COALESCE(@upto::bigint, 9223372036854775807)
  AND (key IS NULL OR (topic, key) NOT IN (
        SELECT f.topic, f.key FROM unnest(@flying_topics::text[], @flying_keys::bytea[]) AS f(topic, key)))
ORDER BY id
LIMIT @limit
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
// (see relay's expiredError). A row not due holds back the later rows of its key.
const dueAt = `GREATEST(next_attempt_at, CASE WHEN expires_at < deliver_after THEN NULL ELSE deliver_after END)`

// heldQuery lists what holds back rows that lockFirstQuery locked: every
// pending row of their keys (@topics, @keys) below id @below that is not one
// of them (@ids), that is rows locked by others or that became visible since
// (the lower bound keeps the scan off the sent history below the oldest
// pending row); and, unless @disable_stuck_blocks_key is true, the oldest stuck
// row of each of their keys.
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
WHERE o.status = 'pending' AND o.key IS NOT NULL AND o.id < @below
  AND o.id >= (SELECT min(id) FROM messages WHERE status = 'pending')
  AND o.id NOT IN (SELECT unnest(@ids::bigint[]))
  AND NOT ((o.topic, o.key) NOT IN (SELECT f.topic, f.key FROM unnest(@topics::text[], @keys::bytea[]) AS f(topic, key)))
UNION ALL
SELECT s.topic, s.key, min(s.id) FROM stuck_messages s
WHERE NOT @disable_stuck_blocks_key::boolean
  AND (s.topic, s.key) IN (SELECT f.topic, f.key FROM unnest(@topics::text[], @keys::bytea[]) AS f(topic, key))
GROUP BY s.topic, s.key`

// claimQuery is the claim's fallback when held rows fill lockFirstQuery's
// page (see Claim). It locks up to @limit due pending rows in id order,
// skipping rows other relays hold, and numbers each keyed row's place in its
// key's chain. A keyed row qualifies only when every earlier pending row of
// its topic and key is in this batch, up to @max_waves rows a key: an
// earlier row in flight elsewhere or waiting for a retry holds all later
// rows of its key. Unless @disable_stuck_blocks_key is true, an earlier stuck row
// of the key holds them too (strict order).
//
// It reads the first @window pending rows in id order (the window) and ranks the
// rows of each key in it. Because the window is a prefix of the pending
// rows, every earlier pending row of a key is in it, so a row's rank is its
// place among its key's pending rows, with no probe of the key's history:
// the probe the older claim ran for every candidate walked index entries of
// sent rows until vacuum removed them, and ran again for every row already
// locked by a batch in flight. A row qualifies when it and every earlier row
// of its key in the window are due. The chosen rows are then locked in id
// order until @limit are held (a nested loop over the sorted ids, so locking
// stops early); rows locked by others are skipped, which can break a chain:
// the caller keeps a row only when the row ranked before it is in the batch
// (see claimWindow), and produces each rank as a wave after the previous
// rank was acknowledged (see relay's produceWaves). @flying_ids lists the rows of the
// caller's own batches in flight: they and the rows behind them are not
// tried at all, so the next batch does not lock rows it would only drop.
//
// Like lockFirstQuery, it returns the payload and headers only of rows of
// at most @small_row bytes, and each row's size in the last column.
//
// The column before the size tells how many rows the window held: when it was full and
// too few rows qualified, the caller widens it (see Claim), so a long run of
// held rows can never starve rows of other keys behind it.
//
// @now is "now", NULL for the database clock; tests pass a fixed time.
const claimQuery = `
WITH window_rows AS MATERIALIZED (
    SELECT id, topic, key, ` + dueAt + ` AS next_attempt_at FROM messages
    WHERE status = 'pending'
    ORDER BY id
    LIMIT @window
), chosen AS MATERIALIZED (
    SELECT id, rank FROM (
        SELECT id,
               CASE WHEN key IS NULL THEN 1 ELSE row_number() OVER w END AS rank,
               CASE WHEN key IS NULL THEN next_attempt_at ELSE max(next_attempt_at) OVER w END AS due_at,
               CASE WHEN key IS NULL THEN flying ELSE bool_or(flying) OVER w END AS behind_flying
        FROM (SELECT *, id IN (SELECT unnest(@flying_ids::bigint[])) AS flying FROM window_rows) f
        WINDOW w AS (PARTITION BY topic, key ORDER BY id ROWS UNBOUNDED PRECEDING)) r
    WHERE due_at <= COALESCE(@now::timestamptz, now()) AND rank <= @max_waves AND NOT behind_flying
)
SELECT m.id, m.topic, m.key,
       CASE WHEN ` + rowSize + ` <= @small_row::bigint THEN m.payload END,
       CASE WHEN ` + rowSize + ` <= @small_row::bigint THEN m.headers END,
       m.uuid, m.attempts, m.created_at, m.deliver_after, m.expires_at, m.partition,
       COALESCE(m.expires_at <= COALESCE(@now::timestamptz, now()), false),
       c.rank, (SELECT count(*) FROM window_rows),
       ` + rowSize + `
FROM (SELECT id, rank FROM chosen ORDER BY id) c
JOIN messages m ON m.id = c.id
WHERE m.status = 'pending'
  AND (m.key IS NULL OR @disable_stuck_blocks_key::boolean
       OR NOT EXISTS (SELECT 1 FROM stuck_messages)
       OR NOT EXISTS (
            SELECT 1 FROM stuck_messages s
            WHERE s.topic = m.topic AND s.key = m.key AND s.id < m.id))
ORDER BY c.id
LIMIT @limit
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
// $1: the stall bound in ms (see session.go), as the transaction's
// idle-in-transaction timeout and TCP user timeout, so that a relay that
// froze or was cut off lets go of its rows.
//
// No sequential scans: every statement of a batch reaches rows by id or
// through the pending indexes, and a plan that reads the whole table is
// never the cheaper one for long. The planner picks one when the
// statistics say the table is small, as they do for a new outbox, or one
// whose rows were just pruned, until the next ANALYZE; and the mark's
// cached generic plan then scanned every row of the table at each batch
// (a hash join of the sent ids with a sequential scan: 45 buffers a row
// at 1,000 rows/s where the index takes about 10). enable_seqscan = off
// only prices them out; an index path always exists.
const batchSettingsQuery = `
SELECT set_config('synchronous_commit', 'off', true),
       set_config('idle_in_transaction_session_timeout', $1, true),
       set_config('tcp_user_timeout', $1, true),
       set_config('enable_seqscan', 'off', true)`

// windowFullQuery tells whether at least $1 rows are pending: whether a claim
// that found nothing had a full window.
const windowFullQuery = `SELECT count(*) = $1 FROM (SELECT 1 FROM messages WHERE status = 'pending' LIMIT $1) w`

// maxWaves bounds how many rows of one key a batch takes: each is produced
// only after the one before it was acknowledged, so a batch of a single hot
// key costs this many Kafka round trips.
const maxWaves = 100

// ClaimParams are a claim's parameters.
type ClaimParams struct {
	Limit                 int   // the batch's row bound
	Window                int   // how many pending rows the fallback claim looks at first
	MaxBytes              int64 // the batch's byte bound
	DisableStuckBlocksKey bool  // a stuck row does not hold back the later rows of its key
	// Widen lets the claim widen its window past held rows (see Claim).
	Widen bool
	// The rows of the relay's batches in flight (see AddFlying).
	FlyingIDs    []int64
	FlyingTopics []string // and their keys, in parallel
	FlyingKeys   [][]byte
	Now          *time.Time // nil: the database clock
	// AfterLock, for tests, runs between the lock and the held-rows
	// query, to let another session commit there.
	AfterLock func()
}

// smallRow is the size up to which the claim queries return a row's
// payload and headers with the lock: rows no larger cannot pass the byte
// bound as a batch, whatever their order. Larger rows are read afterwards,
// if they fit (see readLarge).
func (q ClaimParams) smallRow() int64 { return q.MaxBytes / int64(max(q.Limit, 1)) }

// upto is the highest id the lock may reach while batches are in flight:
// one and a half batches past the highest id in flight. Rows above the
// batches in flight are new rows, so that many ids are enough to fill a
// batch of other keys; behind a backlog of the keys in flight, it bounds
// what the claim reads to the rows in flight and 1.5 batches (the next
// claim, once they ended, has no bound). nil when nothing is in flight.
func (q ClaimParams) upto() *int64 {
	if len(q.FlyingIDs) == 0 {
		return nil
	}
	top := slices.Max(q.FlyingIDs) + int64(q.Limit) + int64(q.Limit)/2
	return &top
}

// AddFlying records rows of one of the relay's batches in flight: the claim
// skips their keys instead of locking rows they hold back.
func (q *ClaimParams) AddFlying(rows []Row) {
	for _, x := range rows {
		q.FlyingIDs = append(q.FlyingIDs, x.ID)
		if x.Key != nil {
			q.FlyingTopics = append(q.FlyingTopics, x.Topic)
			q.FlyingKeys = append(q.FlyingKeys, x.Key)
		}
	}
}

// BatchTx is a batch's transaction: it holds the locks of the rows it
// claimed until it commits what became of them (WriteBack, Commit) or rolls
// back, and then the rows are pending again.
//
// It runs on a pool connection of its own and sends BEGIN and COMMIT itself,
// each with the statements next to it, rather than through pgx.Tx: BEGIN
// goes with the claim and COMMIT with the write-back, so that a batch costs
// the database two round trips fewer (at a trickle, a batch carries two or
// three rows, and the relay's Postgres CPU is mostly per batch).
type BatchTx struct {
	conn  *pgxpool.Conn
	bound string    // the stall bound, as a setting's value
	last  time.Time // when the transaction last sent a statement
	// begun: BEGIN was sent (with the claim); ended: the transaction
	// committed or rolled back, and conn went back to the pool.
	begun, ended bool
	// writes is the write-back, sent with COMMIT (see WriteBack); steps
	// names each of its statements, for errors.
	writes *pgx.Batch
	steps  []string
}

// batchConn is what a batch's statements run on: its pool connection.
type batchConn interface {
	Querier
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// Begin takes a connection for a batch's transaction; the transaction
// itself begins with the claim, in the same round trip.
func (s *Store) Begin(ctx context.Context) (*BatchTx, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	return &BatchTx{conn: conn, bound: s.bound}, nil
}

// Claim locks the rows of one batch and tells whether more rows may be
// pending beyond them. It first locks the oldest pending rows as they come
// (lockFirstQuery), which costs little more than a naive claim. When that
// yields less than half a batch from a full page of locked rows (the oldest
// rows are held back: a key's head waits for a retry or is stuck, or other
// relays hold the heads), and q.Widen is set, it claims again through a
// window that grows until it finds rows (see claimWindow), so held rows at
// the head cannot starve the rows behind them. Both run in the same
// transaction; the rows the first locked stay locked and are found again.
//
// When the byte bound cut the batch (full), it returns at once: claiming
// more in this transaction would only read payloads it cannot take.
func (b *BatchTx) Claim(ctx context.Context, q ClaimParams) (rows []Row, more bool, err error) {
	defer func() { b.last = time.Now() }()
	// The queries take the arrays as arrays, never NULL.
	q.FlyingIDs = orEmpty(q.FlyingIDs)
	q.FlyingTopics = orEmpty(q.FlyingTopics)
	q.FlyingKeys = orEmpty(q.FlyingKeys)
	var full bool
	begin := !b.begun
	b.begun = true
	rows, more, full, err = claimLockFirst(ctx, b.conn, q, b.bound, begin)
	if err != nil || full || 2*len(rows) >= q.Limit || !more || !q.Widen {
		return rows, more || full, err
	}
	for {
		rows, more, full, err = claimWindow(ctx, b.conn, q)
		if err != nil || full || 2*len(rows) >= q.Limit || !more {
			return rows, more || full, err
		}
		q.Window *= 2
	}
}

// orEmpty is s, or an empty slice when s is nil (which pgx sends as NULL).
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// DeclareBusy withdraws the relay's registration for wake-ups (see
// Store.DeclareBusy) in the batch's transaction: setval is immediate, so
// inserts stop notifying now, not at commit.
func (b *BatchTx) DeclareBusy(ctx context.Context) error {
	if _, err := b.conn.Exec(ctx, declareBusyQuery); err != nil {
		return fmt.Errorf("declare busy: %w", err)
	}
	return nil
}

// KeepAlive sends a statement on the transaction when every has passed
// since its last one, so that a batch waiting for Kafka wave after wave
// stays within the stall bound, and fails once Postgres has ended the
// transaction (the batch then stops: its rows are pending again).
func (b *BatchTx) KeepAlive(ctx context.Context, every time.Duration) error {
	if time.Since(b.last) < every {
		return nil
	}
	if _, err := b.conn.Exec(ctx, "SELECT 1"); err != nil {
		return fmt.Errorf("batch transaction lost: %w", err)
	}
	b.last = time.Now()
	return nil
}

// Commit commits the batch: what WriteBack holds and the end of its locks,
// in one round trip. If it fails, nothing of the write-back holds, and
// Rollback ends the transaction.
func (b *BatchTx) Commit(ctx context.Context) error {
	if b.ended || !b.begun {
		return errors.New("commit batch: no transaction")
	}
	writes, steps := b.writes, append(b.steps, "commit batch")
	b.writes, b.steps = nil, nil
	if writes == nil {
		writes = &pgx.Batch{}
	}
	writes.Queue("COMMIT")
	br := b.conn.SendBatch(ctx, writes)
	for _, step := range steps {
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return fmt.Errorf("%s: %w", step, err)
		}
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("commit batch: %w", err)
	}
	// COMMIT of a transaction that failed answers ROLLBACK without an
	// error: only an idle connection proves the commit.
	if st := b.conn.Conn().PgConn().TxStatus(); st != 'I' {
		return fmt.Errorf("commit batch: the transaction did not commit (status %q)", st)
	}
	b.end()
	return nil
}

// Rollback ends the transaction, unless it has ended: its rows are pending
// again, as they were.
func (b *BatchTx) Rollback(ctx context.Context) error {
	if b.ended {
		return nil
	}
	var err error
	if b.begun && !b.conn.Conn().PgConn().IsClosed() {
		_, err = b.conn.Exec(ctx, "ROLLBACK")
	}
	b.end() // the pool drops the connection if it is not idle
	return err
}

// end hands the connection back to the pool.
func (b *BatchTx) end() {
	b.ended = true
	b.writes, b.steps = nil, nil
	b.conn.Release()
}

// claimLockFirst locks the oldest pending rows (lockFirstQuery) and keeps
// those that may go now: for each key, its locked rows in id order, up to
// maxWaves, as long as each is due and no row of the key that holds it back
// (heldQuery: locked by others, or stuck) has a lower id. The first row that
// fails ends its key's chain; the rest stays locked, untouched, until the
// batch ends. It reports whether the page of locked rows was full.
func claimLockFirst(ctx context.Context, tx batchConn, q ClaimParams, bound string, begin bool) (kept []Row, more, full bool, err error) {
	// One round trip: BEGIN (the first claim of the transaction), the
	// batch's settings (see batchSettingsQuery) and the lock.
	var b pgx.Batch
	if begin {
		b.Queue("BEGIN")
	}
	b.Queue(batchSettingsQuery, bound)
	b.Queue(lockFirstQuery, pgx.NamedArgs{
		"limit": q.Limit, "flying_topics": q.FlyingTopics, "flying_keys": q.FlyingKeys,
		"now": q.Now, "small_row": q.smallRow(), "upto": q.upto()})
	br := tx.SendBatch(ctx, &b)
	for range b.Len() - 1 { // BEGIN, the settings
		if _, err := br.Exec(); err != nil {
			_ = br.Close()
			return nil, false, false, fmt.Errorf("claim: %w", err)
		}
	}
	rs, err := br.Query()
	if err != nil {
		_ = br.Close()
		return nil, false, false, fmt.Errorf("claim: %w", err)
	}
	type candidate struct {
		Row
		due bool
	}
	locked, err := pgx.CollectRows(rs, func(rs pgx.CollectableRow) (candidate, error) {
		var c candidate
		err := rs.Scan(&c.ID, &c.Topic, &c.Key, &c.Payload, &c.Headers, &c.UUID, &c.Attempts, &c.CreatedAt,
			&c.DeliverAfter, &c.ExpiresAt, &c.Partition, &c.Expired, &c.due, &c.Size)
		return c, err
	})
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, false, false, fmt.Errorf("claim: %w", err)
	}
	if len(locked) == 0 {
		return nil, false, false, nil
	}
	if q.AfterLock != nil {
		q.AfterLock()
	}
	ids := make([]int64, len(locked))
	var topics []string
	var keys [][]byte
	for i, c := range locked {
		ids[i] = c.ID
		if c.Key != nil {
			topics = append(topics, c.Topic)
			keys = append(keys, c.Key)
		}
	}
	// The lowest id that holds back each key: rows above it wait.
	heldFrom := map[string]int64{}
	rs, err = tx.Query(ctx, heldQuery, pgx.NamedArgs{
		"below": locked[len(locked)-1].ID, "ids": ids, "topics": topics, "keys": keys,
		"disable_stuck_blocks_key": q.DisableStuckBlocksKey})
	if err != nil {
		return nil, false, false, fmt.Errorf("claim: held rows: %w", err)
	}
	var (
		topic string
		key   []byte
		id    int64
	)
	_, err = pgx.ForEachRow(rs, []any{&topic, &key, &id}, func() error {
		k := Row{Topic: topic, Key: key}.ChainKey()
		if from, ok := heldFrom[k]; !ok || id < from {
			heldFrom[k] = id
		}
		return nil
	})
	if err != nil {
		return nil, false, false, fmt.Errorf("claim: held rows: %w", err)
	}

	fit := fitting(locked, func(c candidate) int64 { return c.Size }, q.MaxBytes)
	full = fit < len(locked)  // the rest is beyond the byte bound: not produced
	waves := map[string]int{} // topic and key → rows kept; -1 once the chain ended
	for i, c := range locked {
		fits := i < fit
		if c.Key == nil {
			if c.due && fits {
				c.Wave = 1
				kept = append(kept, c.Row)
			}
			continue
		}
		k := c.ChainKey()
		n := waves[k]
		from, held := heldFrom[k]
		if n < 0 || !c.due || !fits || (held && from < c.ID) || n >= maxWaves {
			waves[k] = -1
			continue
		}
		waves[k] = n + 1
		c.Wave = n + 1
		kept = append(kept, c.Row)
	}
	if err := readLarge(ctx, tx, kept, q.smallRow()); err != nil {
		return nil, false, false, err
	}
	return kept, len(locked) == q.Limit, full, nil
}

// claimWindow runs claimQuery once and reports whether its window was full
// and whether the byte bound cut it. It keeps a row only when the row before
// it in its key's chain is in the batch too: SKIP LOCKED may have skipped
// that one (in flight elsewhere), and then this row must wait. A row dropped
// here stays locked until the batch ends, untouched.
func claimWindow(ctx context.Context, tx batchConn, q ClaimParams) (kept []Row, more, full bool, err error) {
	rs, err := tx.Query(ctx, claimQuery, pgx.NamedArgs{
		"limit": q.Limit, "now": q.Now, "disable_stuck_blocks_key": q.DisableStuckBlocksKey, "window": q.Window,
		"max_waves": maxWaves, "flying_ids": q.FlyingIDs, "small_row": q.smallRow()})
	if err != nil {
		return nil, false, false, fmt.Errorf("claim: %w", err)
	}
	var scanned int64
	out, err := pgx.CollectRows(rs, func(rs pgx.CollectableRow) (Row, error) {
		var x Row
		err := rs.Scan(&x.ID, &x.Topic, &x.Key, &x.Payload, &x.Headers, &x.UUID, &x.Attempts, &x.CreatedAt,
			&x.DeliverAfter, &x.ExpiresAt, &x.Partition, &x.Expired, &x.Wave, &scanned, &x.Size)
		return x, err
	})
	if err != nil {
		return nil, false, false, fmt.Errorf("claim: %w", err)
	}
	if len(out) > 0 {
		fit := fitting(out, func(x Row) int64 { return x.Size }, q.MaxBytes)
		for i := fit; i < len(out); i++ {
			out[i].Wave = -1 // beyond the byte bound: dropped with its chain
		}
		kept = unbrokenChains(out)
		if err := readLarge(ctx, tx, kept, q.smallRow()); err != nil {
			return nil, false, false, err
		}
		return kept, scanned == int64(q.Window), fit < len(out), nil
	}
	var windowFull bool
	if err := tx.QueryRow(ctx, windowFullQuery, q.Window).Scan(&windowFull); err != nil {
		return nil, false, false, fmt.Errorf("claim: %w", err)
	}
	return nil, windowFull, false, nil
}

// unbrokenChains drops every keyed row whose predecessor in its key's chain
// is missing from rows (which are in id order).
func unbrokenChains(rows []Row) []Row {
	last := map[string]int{} // topic and key → wave of the key's last kept row
	kept := rows[:0]
	for _, x := range rows {
		if x.Wave < 0 {
			continue // beyond the byte bound
		}
		if x.Key == nil {
			kept = append(kept, x)
			continue
		}
		k := x.ChainKey()
		if x.Wave == 1 || last[k] == x.Wave-1 {
			last[k] = x.Wave
			kept = append(kept, x)
		}
	}
	return kept
}

// fitting applies the batch's byte bound to rows in id order: it returns how
// many of the first rows fit, that is the rows whose predecessors' sizes add
// up to less than maxBytes. The first row always fits, however large, so a
// row larger than the bound goes alone.
func fitting[T any](rows []T, size func(T) int64, maxBytes int64) int {
	var before int64
	for i, x := range rows {
		if i > 0 && before >= maxBytes {
			return i
		}
		before += size(x)
	}
	return len(rows)
}

// readLarge reads the payload and headers of the rows larger than small,
// which the claim queries leave out: only those of the rows the batch keeps
// are ever read, so a batch holds at most its byte bound (plus one row). A
// batch of small rows costs no second statement.
func readLarge(ctx context.Context, tx batchConn, rows []Row, small int64) error {
	at := map[int64]int{}
	var ids []int64
	for i, x := range rows {
		if x.Size > small {
			at[x.ID] = i
			ids = append(ids, x.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	rs, err := tx.Query(ctx, largeRowsQuery, ids)
	if err != nil {
		return fmt.Errorf("claim: large rows: %w", err)
	}
	var (
		id               int64
		payload, headers []byte
	)
	read := 0
	_, err = pgx.ForEachRow(rs, []any{&id, &payload, &headers}, func() error {
		x := &rows[at[id]]
		x.Payload, x.Headers = payload, headers
		read++
		return nil
	})
	if err == nil && read != len(ids) {
		err = fmt.Errorf("%d of %d locked rows not found", len(ids)-read, len(ids))
	}
	if err != nil {
		return fmt.Errorf("claim: large rows: %w", err)
	}
	return nil
}
