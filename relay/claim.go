package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// maxWaves bounds how many rows of one key a batch takes: each is produced
// only after the one before it was acknowledged, so a batch of a single hot
// key costs this many Kafka round trips.
const maxWaves = 100

// claimParams are the claim queries' parameters.
type claimParams struct {
	limit, window    int
	maxBytes         int64    // the batch's byte bound (see Config.BatchMaxBytes)
	flyingIDs        []int64  // rows of this relay's batches in flight
	flyingTopics     []string // and their keys, in parallel
	flyingKeys       [][]byte
	stuckReleasesKey bool
	idleLimitMillis  string     // the transaction's idle_in_transaction_session_timeout
	now              *time.Time // nil: the database clock
	// afterLock, for tests, runs between the lock and the held-rows
	// query, to let another session commit there.
	afterLock func()
}

// smallRow is the size up to which the claim queries return a row's
// payload and headers with the lock: rows no larger cannot pass the byte
// bound as a batch, whatever their order. Larger rows are read afterwards,
// if they fit (see readLarge).
func (q claimParams) smallRow() int64 { return q.maxBytes / int64(max(q.limit, 1)) }

// addFlying records rows of one of this relay's batches in flight.
func (q *claimParams) addFlying(rows []row) {
	for _, x := range rows {
		q.flyingIDs = append(q.flyingIDs, x.ID)
		if x.Key != nil {
			q.flyingTopics = append(q.flyingTopics, x.Topic)
			q.flyingKeys = append(q.flyingKeys, x.Key)
		}
	}
}

// claim locks the rows of one batch and tells whether more rows may be
// pending beyond them. It first locks the oldest pending rows as they come
// (lockFirstQuery), which costs little more than a naive claim. When that
// yields less than half a batch from a full page of locked rows (the oldest
// rows are held back: a key's head waits for a retry or is stuck, or other
// relays hold the heads), and widen is set, it claims again through a
// window that grows until it finds rows (see claimWindow), so held rows at
// the head cannot starve the rows behind them. Both run in the same
// transaction; the rows the first locked stay locked and are found again.
//
// When the byte bound cut the batch (full), it returns at once: claiming
// more in this transaction would only read payloads it cannot take.
func claim(ctx context.Context, tx pgx.Tx, q claimParams, widen bool) (rows []row, more bool, err error) {
	var full bool
	rows, more, full, err = claimLockFirst(ctx, tx, q)
	if err != nil || full || 2*len(rows) >= q.limit || !more || !widen {
		return rows, more || full, err
	}
	for {
		rows, more, full, err = claimWindow(ctx, tx, q)
		if err != nil || full || 2*len(rows) >= q.limit || !more {
			return rows, more || full, err
		}
		q.window *= 2
	}
}

// claimLockFirst locks the oldest pending rows (lockFirstQuery) and keeps
// those that may go now: for each key, its locked rows in id order, up to
// maxWaves, as long as each is due and no row of the key that holds it back
// (heldQuery: locked by others, or stuck) has a lower id. The first row that
// fails ends its key's chain; the rest stays locked, untouched, until the
// batch ends. It reports whether the page of locked rows was full.
func claimLockFirst(ctx context.Context, tx pgx.Tx, q claimParams) (kept []row, more, full bool, err error) {
	// One round trip: the batch's settings (see batchSettingsQuery) and
	// the lock.
	var b pgx.Batch
	b.Queue(batchSettingsQuery, q.idleLimitMillis)
	b.Queue(lockFirstQuery, q.limit, q.flyingTopics, q.flyingKeys, q.now, q.smallRow())
	br := tx.SendBatch(ctx, &b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return nil, false, false, fmt.Errorf("claim: %w", err)
	}
	rs, err := br.Query()
	if err != nil {
		_ = br.Close()
		return nil, false, false, fmt.Errorf("claim: %w", err)
	}
	type candidate struct {
		row
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
	if q.afterLock != nil {
		q.afterLock()
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
	rs, err = tx.Query(ctx, heldQuery, locked[len(locked)-1].ID, ids, topics, keys, q.stuckReleasesKey)
	if err != nil {
		return nil, false, false, fmt.Errorf("claim: held rows: %w", err)
	}
	var (
		topic string
		key   []byte
		id    int64
	)
	_, err = pgx.ForEachRow(rs, []any{&topic, &key, &id}, func() error {
		k := chainKey(row{Topic: topic, Key: key})
		if from, ok := heldFrom[k]; !ok || id < from {
			heldFrom[k] = id
		}
		return nil
	})
	if err != nil {
		return nil, false, false, fmt.Errorf("claim: held rows: %w", err)
	}

	fit := fitting(locked, func(c candidate) int64 { return c.Size }, q.maxBytes)
	full = fit < len(locked)  // the rest is beyond the byte bound: not produced
	waves := map[string]int{} // topic and key → rows kept; -1 once the chain ended
	for i, c := range locked {
		fits := i < fit
		if c.Key == nil {
			if c.due && fits {
				c.Wave = 1
				kept = append(kept, c.row)
			}
			continue
		}
		k := chainKey(c.row)
		n := waves[k]
		from, held := heldFrom[k]
		if n < 0 || !c.due || !fits || (held && from < c.ID) || n >= maxWaves {
			waves[k] = -1
			continue
		}
		waves[k] = n + 1
		c.Wave = n + 1
		kept = append(kept, c.row)
	}
	if err := readLarge(ctx, tx, kept, q.smallRow()); err != nil {
		return nil, false, false, err
	}
	return kept, len(locked) == q.limit, full, nil
}

// claimWindow runs claimQuery once and reports whether its window was full
// and whether the byte bound cut it. It keeps a row only when the row before
// it in its key's chain is in the batch too: SKIP LOCKED may have skipped
// that one (in flight elsewhere), and then this row must wait. A row dropped
// here stays locked until the batch ends, untouched.
func claimWindow(ctx context.Context, tx pgx.Tx, q claimParams) (kept []row, more, full bool, err error) {
	rs, err := tx.Query(ctx, claimQuery, q.limit, q.now, q.stuckReleasesKey, q.window, maxWaves, q.flyingIDs, q.smallRow())
	if err != nil {
		return nil, false, false, fmt.Errorf("claim: %w", err)
	}
	var scanned int64
	out, err := pgx.CollectRows(rs, func(rs pgx.CollectableRow) (row, error) {
		var x row
		err := rs.Scan(&x.ID, &x.Topic, &x.Key, &x.Payload, &x.Headers, &x.UUID, &x.Attempts, &x.CreatedAt,
			&x.DeliverAfter, &x.ExpiresAt, &x.Partition, &x.Expired, &x.Wave, &scanned, &x.Size)
		return x, err
	})
	if err != nil {
		return nil, false, false, fmt.Errorf("claim: %w", err)
	}
	if len(out) > 0 {
		fit := fitting(out, func(x row) int64 { return x.Size }, q.maxBytes)
		for i := fit; i < len(out); i++ {
			out[i].Wave = -1 // beyond the byte bound: dropped with its chain
		}
		kept = unbrokenChains(out)
		if err := readLarge(ctx, tx, kept, q.smallRow()); err != nil {
			return nil, false, false, err
		}
		return kept, scanned == int64(q.window), fit < len(out), nil
	}
	var windowFull bool
	if err := tx.QueryRow(ctx, windowFullQuery, q.window).Scan(&windowFull); err != nil {
		return nil, false, false, fmt.Errorf("claim: %w", err)
	}
	return nil, windowFull, false, nil
}

// unbrokenChains drops every keyed row whose predecessor in its key's chain
// is missing from rows (which are in id order).
func unbrokenChains(rows []row) []row {
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
		k := chainKey(x)
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
func readLarge(ctx context.Context, tx pgx.Tx, rows []row, small int64) error {
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
