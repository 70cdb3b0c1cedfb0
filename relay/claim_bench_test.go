package relay_test

import (
	"context"
	"os"
	"strconv"
	"testing"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// BenchmarkClaimWithRetainedSentRows shows that the claim's cost does not
// grow with the history kept by RELAY_SENT_RETENTION: one claim of a
// 1,000-row batch from 20,000 pending rows (10,000 keys), with no sent rows
// retained and with 5 million (RELAY_BENCH_RETAINED overrides). Run it alone;
// loading the history takes a minute or two:
//
//	go test ./relay -run '^$' -bench BenchmarkClaimWithRetainedSentRows -benchtime 200x -count 3
//
// Each op is BEGIN, the claim, ROLLBACK, so every op claims the same rows.
// Compare the two sub-benchmarks of the same run (benchstat), not absolute
// figures across runs.
func BenchmarkClaimWithRetainedSentRows(b *testing.B) {
	retained := envInt(b, "RELAY_BENCH_RETAINED", 5_000_000)
	for _, n := range []int{0, retained} {
		b.Run("retained="+strconv.Itoa(n), func(b *testing.B) {
			benchmarkClaim(b, n, 20_000)
		})
	}
}

// BenchmarkClaimWithBacklog shows that the claim's cost does not grow with
// the backlog: one claim of a 1,000-row batch (10,000 keys) from 20,000
// pending rows and from 1 million (RELAY_BENCH_BACKLOG overrides), no
// history. The claim reads the oldest pending rows and, for the keys it
// locked, the pending rows below them; neither depends on how many wait
// behind. Run it alone:
//
//	go test ./relay -run '^$' -bench BenchmarkClaimWithBacklog -benchtime 200x -count 3
func BenchmarkClaimWithBacklog(b *testing.B) {
	backlog := envInt(b, "RELAY_BENCH_BACKLOG", 1_000_000)
	for _, n := range []int{20_000, backlog} {
		b.Run("pending="+strconv.Itoa(n), func(b *testing.B) {
			benchmarkClaim(b, 0, n)
		})
	}
}

func benchmarkClaim(b *testing.B, retained, pending int) {
	ctx := context.Background()
	db := relaytest.NewDB(b)
	exec := func(sql string, args ...any) {
		b.Helper()
		if _, err := db.Pool.Exec(ctx, sql, args...); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	// History first, so it has the lower ids, as it would in production.
	exec(`INSERT INTO messages (topic, key, payload, status, sent_at, kafka_partition, kafka_offset)
	      SELECT 't', convert_to('k' || (i % 10000), 'UTF8'), convert_to(repeat('x', 200), 'UTF8'),
	             'sent', now(), (i % 12)::int, i
	      FROM generate_series(1, $1::int) i`, retained)
	exec(`INSERT INTO messages (topic, key, payload)
	      SELECT 't', convert_to('k' || (i % 10000), 'UTF8'), convert_to(repeat('x', 200), 'UTF8')
	      FROM generate_series(1, $1::int) i`, pending)
	exec(`VACUUM ANALYZE messages`)

	r := relay.New(relay.Config{Schema: db.Schema, BatchSize: 1000}, db.Pool, nil, testLogger(b))
	b.ResetTimer()
	for range b.N {
		n, err := r.ClaimAndRelease(ctx)
		if err != nil || n != 1000 {
			b.Fatalf("claim: %d rows, %v; want 1000", n, err)
		}
	}
}

// envInt reads a benchmark size from the environment variable name, or def.
func envInt(b *testing.B, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		b.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}
