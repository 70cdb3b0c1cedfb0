package kafkasink

import (
	"crypto/rand"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The sink's own per-row work on a batch, without the database or Kafka:
// what the client CPU of a bulk drain is spent on besides pgx and franz-go.
// Compare allocs/op and ns/op of two builds in the same run (benchstat):
//
//	go test ./internal/kafkasink -run '^$' -bench 'BenchmarkBatch' -benchmem -count 6

// benchBatch is a batch of 1,000 rows as relay bench writes them: one
// topic, 256-byte payloads, keys, no application headers.
func benchBatch() []row {
	rows := make([]row, 1000)
	for i := range rows {
		var id pgtype.UUID
		_, _ = rand.Read(id.Bytes[:])
		id.Valid = true
		rows[i] = row{ID: int64(1e6 + i), Topic: "bench-orders", Key: fmt.Appendf(nil, "key-%d", i),
			Payload: make([]byte, 256), Headers: []byte("{}"), UUID: id, CreatedAt: time.Now(), Wave: 1}
	}
	return rows
}

// BenchmarkBatchRecords turns a batch into records, checks them against the
// topic's settings and groups them, as Produce does before the client.
func BenchmarkBatchRecords(b *testing.B) {
	s := &Sink{logger: slog.New(slog.DiscardHandler), limits: &topicLimits{}}
	rows := benchBatch()
	verdicts := map[string]topicVerdict{"bench-orders": {checked: time.Now(), maxBytes: 1_048_588}}
	b.ReportAllocs()
	for b.Loop() {
		recs := make([]*kgo.Record, len(rows))
		for i, x := range rows {
			rec, err := s.recordOf(x)
			if err == nil {
				err = s.checkTopicSettings(rec, verdicts[rec.Topic])
			}
			if err != nil {
				b.Fatal(err)
			}
			recs[i] = rec
		}
		if g := s.groups(recs, verdicts); len(g) != 1 {
			b.Fatalf("%d groups, want 1", len(g))
		}
	}
}
