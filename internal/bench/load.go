package bench

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/relay/relay"
)

// preloadChunk is how many rows one preload statement inserts.
const preloadChunk = 50_000

// preloadQuery inserts rows $4..$5: row i goes to topic i mod len($1) with
// key "key-<i mod $2>" ($2 <= 0: no key), as the streamed rows do.
const preloadQuery = `
INSERT INTO messages (topic, key, payload)
SELECT ($1::text[])[1 + i % cardinality($1::text[])],
       CASE WHEN $2::int > 0 THEN convert_to('key-' || (i % $2::int), 'UTF8') END,
       $3::bytea
FROM generate_series($4::bigint, $5::bigint) AS i`

// streamQuery inserts one application transaction's rows.
const streamQuery = `
INSERT INTO messages (topic, key, payload)
SELECT t, k, $3::bytea FROM unnest($1::text[], $2::bytea[]) AS u(t, k)
RETURNING id`

// In an outbox the bench shares with external relays, ids come from a
// sequence others use too, so each row carries its row number (1..n, its
// timeline index) in the header bench-row, which the relays copy to Kafka.
const (
	headerBenchRow = "bench-row"

	// preloadTaggedQuery is preloadQuery with the bench-row header.
	preloadTaggedQuery = `
INSERT INTO messages (topic, key, payload, headers)
SELECT ($1::text[])[1 + i % cardinality($1::text[])],
       CASE WHEN $2::int > 0 THEN convert_to('key-' || (i % $2::int), 'UTF8') END,
       $3::bytea,
       jsonb_build_object('bench-row', i::text)
FROM generate_series($4::bigint, $5::bigint) AS i`

	// streamTaggedQuery is streamQuery with the bench-row header: row
	// numbers in $4.
	streamTaggedQuery = `
INSERT INTO messages (topic, key, payload, headers)
SELECT t, k, $3::bytea, jsonb_build_object('bench-row', n::text)
FROM unnest($1::text[], $2::bytea[], $4::bigint[]) AS u(t, k, n)`
)

// preload inserts cfg.Preload rows server-side, then vacuums and analyses
// the table so every variant starts from the same, settled state.
func (e *env) preload(ctx context.Context, topics []string) error {
	if err := e.insertPreload(ctx, e.pool, preloadQuery, topics); err != nil {
		return err
	}
	if _, err := e.pool.Exec(ctx, `VACUUM (ANALYZE) messages`); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	return nil
}

// insertPreload inserts cfg.Preload rows with query (preloadQuery or
// preloadTaggedQuery) in statements of preloadChunk rows.
func (e *env) insertPreload(ctx context.Context, db relay.Querier, query string, topics []string) error {
	n := e.cfg.Preload
	for from := 1; from <= n; from += preloadChunk {
		to := min(from+preloadChunk-1, n)
		if _, err := db.Exec(ctx, query, topics, e.cfg.Keys, e.payload, from, to); err != nil {
			return fmt.Errorf("preload: %w", err)
		}
	}
	return nil
}

func (e *env) rowKey(n int) []byte {
	if e.cfg.Keys <= 0 {
		return nil
	}
	return []byte("key-" + strconv.Itoa(n%e.cfg.Keys))
}

// stream commits rows rows at cfg.Rate rows per second in transactions of
// cfg.RowsPerTx rows, spread over cfg.Writers connections. One schedule
// feeds all writers: transaction i is due at start + i·interval and
// whichever writer is free takes it, so one slow commit does not delay the
// schedule. If every writer is busy the rate falls short; the achieved
// rate is reported.
func (e *env) stream(ctx context.Context, topics []string, rows int, tl *timeline) (insertStats, error) {
	cfg := e.cfg
	txs := rows / cfg.RowsPerTx
	interval := time.Second * time.Duration(cfg.RowsPerTx) / time.Duration(max(cfg.Rate, 1))
	slots := make(chan int)
	errs := make(chan error, cfg.Writers)
	var committed, lastCommit atomic.Int64
	done := make(chan struct{})
	var running atomic.Int32
	running.Store(int32(cfg.Writers))
	// The writers serialise the transactions of each key, as the README
	// asks of applications that want per-key order: a key's row is inserted
	// only once its previous row has committed, so id order is commit
	// order, and an order violation is the relay's, never the writers'.
	var keyLocks []sync.Mutex
	if cfg.Keys > 0 {
		keyLocks = make([]sync.Mutex, cfg.Keys)
	}
	for range cfg.Writers {
		go func() {
			defer func() {
				if running.Add(-1) == 0 {
					close(done)
				}
			}()
			pool := e.pool
			if e.writers != nil {
				pool = e.writers
			}
			conn, err := pool.Acquire(ctx)
			if err != nil {
				errs <- fmt.Errorf("writer: %w", err)
				return
			}
			defer conn.Release()
			ts := make([]string, cfg.RowsPerTx)
			keys := make([][]byte, cfg.RowsPerTx)
			nums := make([]int64, cfg.RowsPerTx)
			locked := make([]int, 0, cfg.RowsPerTx)
			for i := range slots {
				locked = locked[:0]
				for j := range ts {
					n := cfg.Preload + 1 + i*cfg.RowsPerTx + j
					ts[j], keys[j], nums[j] = topics[n%len(topics)], e.rowKey(n), int64(n)
					if keyLocks != nil {
						locked = append(locked, n%cfg.Keys)
					}
				}
				slices.Sort(locked) // one order for all writers: no deadlock
				locked = slices.Compact(locked)
				for _, k := range locked {
					keyLocks[k].Lock()
				}
				ids, err := e.insertRows(ctx, conn.Conn(), ts, keys, nums)
				for _, k := range locked {
					keyLocks[k].Unlock()
				}
				if err != nil {
					errs <- fmt.Errorf("writer: %w", err)
					return
				}
				at := tl.since()
				for _, id := range ids {
					if id >= 1 && id < int64(len(tl.committed)) {
						tl.committed[id].Store(at)
					}
				}
				committed.Add(int64(len(ids)))
				for {
					l := lastCommit.Load()
					if at <= l || lastCommit.CompareAndSwap(l, at) {
						break
					}
				}
			}
		}()
	}
	first := time.Duration(tl.since())
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	var err error
dispatch:
	for i := 0; i < txs; {
		select {
		case <-ctx.Done():
			err = ctx.Err()
			break dispatch
		case err = <-errs:
			break dispatch
		case <-tick.C:
		}
		// Hand out every transaction that is due, catching up on ticks
		// the ticker dropped so the rate holds. In an insert storm every
		// transaction is due until the duration has passed.
		due := int(time.Since(start)/interval) + 1
		if cfg.InsertStorm {
			if time.Since(start) >= cfg.Duration {
				break dispatch
			}
			due = txs
		}
		for ; i < txs && i < due; i++ {
			if cfg.InsertStorm && i%64 == 0 && time.Since(start) >= cfg.Duration {
				break
			}
			select {
			case slots <- i:
			case err = <-errs:
				break dispatch
			case <-ctx.Done():
				err = ctx.Err()
				break dispatch
			}
		}
	}
	tick.Stop()
	close(slots)
	<-done
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	if err != nil {
		return insertStats{}, err
	}
	if cfg.InsertStorm {
		tl.want.Store(int64(cfg.Preload) + committed.Load())
	}
	return insertStats{rows: committed.Load(), first: first, last: time.Duration(lastCommit.Load())}, nil
}

// insertRows commits one application transaction of rows (topic, key,
// row number) and returns their timeline indices: the ids Postgres gave
// them in the bench's own outbox, their row numbers in an external one.
func (e *env) insertRows(ctx context.Context, conn *pgx.Conn, topics []string, keys [][]byte, rows []int64) ([]int64, error) {
	if !e.cfg.external() {
		return insertTx(ctx, conn, topics, keys, e.payload)
	}
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, streamTaggedQuery, topics, keys, e.payload, rows)
		return err
	})
	return rows, err
}

// insertTx is one application transaction.
func insertTx(ctx context.Context, conn *pgx.Conn, topics []string, keys [][]byte, payload []byte) ([]int64, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	rs, err := tx.Query(ctx, streamQuery, topics, keys, payload)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rs, pgx.RowTo[int64])
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	return ids, nil
}

// latency is commit→ack of the streamed rows committed after warmupEnd;
// until says what the timeline's acks are ("ack", or "consumed" with
// external relays).
func (t *timeline) latency(warmupEnd time.Duration, until string) *Latency {
	var ds []float64
	early := 0
	for id := range t.committed {
		c := t.committed[id].Load()
		if c == 0 || time.Duration(c) < warmupEnd {
			continue
		}
		d := t.acked[id].Load() - c
		if d < 0 {
			// Acknowledged before the writer's COMMIT returned to it:
			// the relay saw the commit before the client did.
			early++
			d = 0
		}
		ds = append(ds, float64(d)/float64(time.Millisecond))
	}
	if len(ds) == 0 {
		return nil
	}
	slices.Sort(ds)
	p := func(q float64) float64 { return ds[int(q*float64(len(ds)-1))] }
	return &Latency{Until: until, Rows: len(ds), P50Ms: p(0.5), P90Ms: p(0.9), P99Ms: p(0.99), MaxMs: ds[len(ds)-1], AckedBeforeCommitReturned: early}
}
