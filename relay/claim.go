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
	// afterLock, for tests, runs once the rows are locked, before the
	// claim decides which of them go.
	afterLock func()
}

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

// claimed is what a claim found.
type claimed struct {
	rows []row
	// more: rows may be pending beyond the claim (its page or window
	// was full, or the byte bound cut it).
	more bool
	// full: the byte bound cut the batch; claiming more in this
	// transaction would only read payloads it cannot take.
	full bool
}

// claim locks the rows of one batch and tells whether more rows may be
// pending beyond them. It first locks the oldest pending rows as they come
// (claimHead), which costs little more than a naive claim. When that
// yields less than half a batch from a full page of locked rows (the oldest
// rows are held back: a key's head waits for a retry or is stuck, or other
// relays hold the heads), and widen is set, it claims again through a
// window that grows until it finds rows (see claimWindow), so held rows at
// the head cannot starve the rows behind them. Both run in the same
// transaction; the rows the first locked stay locked and are found again.
func claim(ctx context.Context, tx pgx.Tx, q claimParams, widen bool) (rows []row, more bool, err error) {
	c, err := claimHead(ctx, tx, q)
	if err != nil || c.full || 2*len(c.rows) >= q.limit || !c.more || !widen {
		return c.rows, c.more, err
	}
	for {
		c, err = claimWindow(ctx, tx, q)
		if err != nil || c.full || 2*len(c.rows) >= q.limit || !c.more {
			return c.rows, c.more, err
		}
		q.window *= 2
	}
}

// claimHead locks the oldest pending rows and learns what holds them back,
// in one statement (claimHeadQuery) sent with the transaction's BEGIN and
// settings: one round trip. It keeps the rows that may go now: for each
// key, its locked rows in id order, up to maxWaves, as long as each is due,
// within the byte bound, and no row of the key that holds it back (locked
// by others, or stuck) has a lower id. The first row that fails ends its
// key's chain; the rest stays locked, untouched, until the batch ends.
func claimHead(ctx context.Context, tx pgx.Tx, q claimParams) (claimed, error) {
	var b pgx.Batch
	b.Queue(batchSettingsQuery, q.idleLimitMillis)
	b.Queue(claimHeadQuery, q.limit, q.flyingTopics, q.flyingKeys, q.now, q.stuckReleasesKey, q.window, q.maxBytes)
	br := tx.SendBatch(ctx, &b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return claimed{}, fmt.Errorf("claim: %w", err)
	}
	rs, err := br.Query()
	if err != nil {
		_ = br.Close()
		return claimed{}, fmt.Errorf("claim: %w", err)
	}
	type candidate struct {
		row
		due, fits bool
	}
	var (
		locked   []candidate
		heldFrom = map[string]int64{} // the lowest id that holds back each key: rows above it wait
	)
	for rs.Next() {
		var (
			kind      int
			id        *int64
			topic     *string
			c         candidate
			attempts  *int
			created   *time.Time
			due, fits *bool
		)
		if err := rs.Scan(&kind, &id, &topic, &c.Key, &c.Payload, &c.Headers, &attempts, &created, &due, &fits); err != nil {
			rs.Close()
			_ = br.Close()
			return claimed{}, fmt.Errorf("claim: %w", err)
		}
		switch kind {
		case 1:
			c.ID, c.Topic, c.Attempts, c.CreatedAt, c.due, c.fits = *id, *topic, *attempts, *created, *due, *fits
			locked = append(locked, c)
		case 2, 3:
			k := chainKey(row{Topic: *topic, Key: c.Key})
			if from, ok := heldFrom[k]; !ok || *id < from {
				heldFrom[k] = *id
			}
		}
	}
	err = rs.Err()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return claimed{}, fmt.Errorf("claim: %w", err)
	}
	// A page of locked rows short of the limit may also come from a
	// window full of rows of the keys in flight; then nothing widens (the
	// keys' rows wait for the batches in flight) and the next claim, after
	// they end, reads past them.
	more := len(locked) == q.limit
	if len(locked) == 0 {
		return claimed{more: more}, nil
	}
	if q.afterLock != nil {
		q.afterLock()
	}

	waves := map[string]int{} // topic and key → rows kept; -1 once the chain ended
	var out claimed
	for _, c := range locked {
		if !c.fits {
			out.full = true
		}
		if c.Key == nil {
			if c.due && c.fits {
				c.Wave = 1
				out.rows = append(out.rows, c.row)
			}
			continue
		}
		k := chainKey(c.row)
		n := waves[k]
		from, held := heldFrom[k]
		if n < 0 || !c.due || !c.fits || (held && from < c.ID) || n >= maxWaves {
			waves[k] = -1
			continue
		}
		waves[k] = n + 1
		c.Wave = n + 1
		out.rows = append(out.rows, c.row)
	}
	out.more = more || out.full
	return out, nil
}

// claimWindow runs claimQuery once and reports whether its window was full.
// It keeps a row only when the row before it in its key's chain is in the
// batch too: SKIP LOCKED may have skipped that one (in flight elsewhere), and
// then this row must wait. A row dropped here stays locked until the batch
// ends, untouched.
func claimWindow(ctx context.Context, tx pgx.Tx, q claimParams) (claimed, error) {
	rs, err := tx.Query(ctx, claimQuery, q.limit, q.now, q.stuckReleasesKey, q.window, maxWaves, q.flyingIDs, q.maxBytes)
	if err != nil {
		return claimed{}, fmt.Errorf("claim: %w", err)
	}
	var scanned int64
	var full bool
	out, err := pgx.CollectRows(rs, func(rs pgx.CollectableRow) (row, error) {
		var x row
		var fits bool
		err := rs.Scan(&x.ID, &x.Topic, &x.Key, &x.Payload, &x.Headers, &x.Attempts, &x.CreatedAt, &x.Wave, &scanned, &fits)
		if !fits {
			full = true
			x.Wave = -1 // beyond the byte bound: dropped with its chain
		}
		return x, err
	})
	if err != nil {
		return claimed{}, fmt.Errorf("claim: %w", err)
	}
	if len(out) > 0 {
		return claimed{rows: unbrokenChains(out), more: full || scanned == int64(q.window), full: full}, nil
	}
	var windowFull bool
	if err := tx.QueryRow(ctx, windowFullQuery, q.window).Scan(&windowFull); err != nil {
		return claimed{}, fmt.Errorf("claim: %w", err)
	}
	return claimed{more: windowFull}, nil
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
