package relay

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The relay's own per-row work on a batch, without the database or Kafka.
// Compare allocs/op and ns/op of two builds in the same run (benchstat):
//
//	go test ./relay -run '^$' -bench 'BenchmarkBatch' -benchmem -count 6
//
// Building, checking and grouping the records is BenchmarkBatchRecords in
// internal/kafkasink.

// BenchmarkBatchMetrics records a sent batch of 1,000 rows of one topic in
// the metrics.
func BenchmarkBatchMetrics(b *testing.B) {
	m := NewMetrics(prometheus.NewRegistry())
	rows := make([]row, 1000)
	var out outcome
	for i := range rows {
		rows[i] = row{ID: int64(1e6 + i), Topic: "bench-orders", Key: fmt.Appendf(nil, "key-%d", i), CreatedAt: time.Now()}
		out.sentIDs = append(out.sentIDs, rows[i].ID)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.batchDone(rows, out, nil, time.Millisecond)
	}
}
