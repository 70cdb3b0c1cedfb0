package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/internal/pgstore"
	"github.com/outboxrelay/relay/internal/relaytest"
)

// TestClaimBehindKeysInFlightReadsABoundedSpan is the deep backlog of few
// keys: 20,000 pending rows over 4 keys, the first batch in flight holding
// all four. The next claim can lock nothing (every row waits behind the batch
// in flight), and it must find that out by reading a bounded multiple of its
// batch, not the whole backlog: the key filter is no index condition.
func TestClaimBehindKeysInFlightReadsABoundedSpan(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := relaytest.NewDB(t)
	const backlog, limit = 20_000, 1000
	if _, err := db.Pool.Exec(ctx, `
INSERT INTO messages (topic, key, payload)
SELECT 't', convert_to('k' || (i % 4), 'UTF8'), '\x00'::bytea FROM generate_series(1, $1) i`, backlog); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `VACUUM ANALYZE messages`); err != nil {
		t.Fatal(err)
	}
	store := pgstore.NewStore(db.Pool, db.Schema, 10*time.Second)
	params := func() pgstore.ClaimParams {
		return pgstore.ClaimParams{Limit: limit, Window: 2*limit + limit/2, MaxBytes: 16 << 20}
	}

	first, err := store.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = first.Rollback(ctx) }()
	p := params()
	p.Widen = true
	flying, _, err := first.Claim(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(flying) == 0 {
		t.Fatal("the first claim took nothing")
	}

	second, err := store.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = second.Rollback(ctx) }()
	p = params()
	p.AddFlying(flying)
	rows, _, err := second.Claim(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 0 {
		t.Fatalf("claimed %d rows behind the batch in flight, which holds every key", len(rows))
	}
	var read int64
	if err := second.QueryRow(ctx, `
SELECT COALESCE(sum(pg_stat_get_xact_tuples_returned(indexrelid)), 0)::bigint FROM pg_index WHERE indrelid = 'messages'::regclass`).Scan(&read); err != nil {
		t.Fatal(err)
	}
	if read > 10*limit {
		t.Errorf("the claim behind the batch in flight read %d index entries, more than 10 batches (%d)", read, 10*limit)
	}
	t.Logf("index entries read: %d (backlog %d, batch %d)", read, backlog, limit)

	// Once the batch in flight ended, the keys move again.
	if err := first.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := second.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	third, err := store.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = third.Rollback(ctx) }()
	if rows, _, err := third.Claim(ctx, params()); err != nil || len(rows) != len(flying) {
		t.Fatalf("claim after the batch in flight ended: %d rows, %v; want %d", len(rows), err, len(flying))
	}
}

// TestBatchReadsNoWholeTableWhenStatisticsAreStale is a new outbox: a
// session's statements were planned while the statistics said the table
// held a few hundred rows, and thousands came since. A batch must still
// reach its rows through the indexes. With so small a table the planner
// prefers, for the mark, a hash join of the sent ids with a sequential scan
// of the whole table; prepared statements switch to a cached generic plan
// after five executions, and that plan is not re-costed as the table grows.
func TestBatchReadsNoWholeTableWhenStatisticsAreStale(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := relaytest.NewDB(t)
	cfg, err := pgstore.PoolConfig(db.URL, db.Schema)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // one session: its plans are cached
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	insert := func(n int) {
		t.Helper()
		if _, err := pool.Exec(ctx, `
INSERT INTO messages (topic, key, payload)
SELECT 't', convert_to('k' || i, 'UTF8'), '\x00'::bytea FROM generate_series(1, $1) i`, n); err != nil {
			t.Fatal(err)
		}
	}
	insert(300)
	if _, err := pool.Exec(ctx, `ANALYZE messages`); err != nil {
		t.Fatal(err)
	}
	store := pgstore.NewStore(pool, db.Schema, 10*time.Second)
	for batch := 1; batch <= 16; batch++ {
		if batch == 9 {
			insert(20_000) // after the plans were cached
		}
		tx, err := store.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rows, _, err := tx.Claim(ctx, pgstore.ClaimParams{Limit: 3, Window: 10, MaxBytes: 16 << 20})
		if err != nil || len(rows) == 0 {
			t.Fatalf("batch %d: claimed %d rows: %v", batch, len(rows), err)
		}
		var w pgstore.WriteBack
		for i, x := range rows {
			w.SentIDs = append(w.SentIDs, x.ID)
			w.SentPartitions = append(w.SentPartitions, 0)
			w.SentOffsets = append(w.SentOffsets, int64(i))
		}
		tx.WriteBack(w)
		// The session's counts not yet flushed to the statistics: a
		// scan by any batch so far shows.
		var scans int64
		if err := tx.QueryRow(ctx, `SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relid = 'messages'::regclass`).Scan(&scans); err != nil {
			t.Fatal(err)
		}
		if scans != 0 {
			t.Fatalf("by batch %d the session had scanned the whole outbox %d times", batch, scans)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
