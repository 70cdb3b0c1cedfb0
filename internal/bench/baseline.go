package bench

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/relay"
)

// The naive outbox loop the relay is measured against: one worker, one
// transaction per batch, the batch produced synchronously. It keeps no
// per-key order under failures, escalates nothing, has no wake-up: it is
// the floor an outbox relay has to beat, not a design to copy.
const (
	baselineClaimQuery = `
SELECT id, topic, key, payload FROM messages
WHERE status = 'pending'
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED`

	baselineMarkQuery = `
UPDATE messages AS m
SET status = 'sent', sent_at = now(), kafka_partition = u.p, kafka_offset = u.o
FROM unnest($1::bigint[], $2::int[], $3::bigint[]) AS u(id, p, o)
WHERE m.id = u.id`

	baselineDeleteQuery = `DELETE FROM messages WHERE id = ANY($1::bigint[])`
)

type baseline struct {
	pool         *pgxpool.Pool
	client       *kgo.Client
	batchSize    int
	deleteOnSend bool
	pollInterval time.Duration
}

// run claims batches until ctx ends, sleeping pollInterval after an empty
// or failed claim.
func (b *baseline) run(ctx context.Context) error {
	for {
		n, err := b.once(ctx)
		if ctx.Err() != nil {
			return nil
		}
		// A failed batch (Kafka away) is rolled back and tried again
		// after the poll interval; a phase that never recovers stalls
		// and fails there.
		if err == nil && n > 0 {
			continue
		}
		t := time.NewTimer(b.pollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// once is BEGIN; SELECT … FOR UPDATE SKIP LOCKED; ProduceSync; UPDATE (or
// DELETE); COMMIT.
func (b *baseline) once(ctx context.Context) (int, error) {
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	rs, err := tx.Query(ctx, baselineClaimQuery, b.batchSize)
	if err != nil {
		return 0, err
	}
	var recs []*kgo.Record
	var ids []int64
	for rs.Next() {
		var id int64
		rec := &kgo.Record{}
		if err := rs.Scan(&id, &rec.Topic, &rec.Key, &rec.Value); err != nil {
			rs.Close()
			return 0, err
		}
		rec.Headers = []kgo.RecordHeader{{Key: relay.HeaderOutboxID, Value: []byte(strconv.FormatInt(id, 10))}}
		recs = append(recs, rec)
		ids = append(ids, id)
	}
	if err := rs.Err(); err != nil {
		return 0, err
	}
	if len(recs) == 0 {
		return 0, nil
	}
	// The relay's client has no delivery timeout of its own (it would count
	// from the records' timestamps): bound the produce as the relay does.
	produce, cancel := context.WithTimeout(ctx, relay.DefaultProduceTimeout)
	defer cancel()
	if err := b.client.ProduceSync(produce, recs...).FirstErr(); err != nil {
		return 0, fmt.Errorf("produce: %w", err)
	}
	if b.deleteOnSend {
		_, err = tx.Exec(ctx, baselineDeleteQuery, ids)
	} else {
		parts := make([]int32, len(recs))
		offs := make([]int64, len(recs))
		for i, r := range recs {
			parts[i], offs[i] = r.Partition, r.Offset
		}
		_, err = tx.Exec(ctx, baselineMarkQuery, ids, parts, offs)
	}
	if err != nil {
		return 0, fmt.Errorf("mark: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	return len(recs), nil
}
