package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/retry"
)

// outcome is what happened to each row of a batch.
type outcome struct {
	sentIDs        []int64
	sentPartitions []int32
	sentOffsets    []int64
	failed         []failure
}

type failure struct {
	id      int64
	topic   string
	attempt int // the attempt that failed, counting from 1
	err     error
}

// produce hands every row of the batch to the client and waits for all of
// Kafka's answers. Rows of one key never share a batch (see claimQuery), so a
// failure cannot let a later row of the same key overtake an earlier one.
//
// The client retries retriable errors on its own and, being idempotent, waits
// through broker outages rather than failing records it has already sent;
// the rows wait with it, holding their locks, and spend no attempts. If ctx
// ends first (shutdown timeout), every row not yet answered counts as failed
// with errAborted and the caller rolls the batch back.
func (r *Relay) produce(ctx context.Context, rows []row) outcome {
	type answer struct {
		i   int
		rec *kgo.Record
		err error
	}
	answers := make(chan answer, len(rows))
	pending := 0
	var out outcome
	for i, x := range rows {
		rec, err := x.record()
		if err != nil {
			out.failed = append(out.failed, failure{x.ID, x.Topic, x.Attempts + 1, err})
			continue
		}
		pending++
		r.kafka.Produce(ctx, rec, func(rec *kgo.Record, err error) {
			answers <- answer{i, rec, err}
		})
	}
	for ; pending > 0; pending-- {
		var a answer
		select {
		case a = <-answers:
		case <-ctx.Done():
			out.failed = append(out.failed, failure{err: errAborted})
			return out
		}
		x := rows[a.i]
		if a.err != nil {
			out.failed = append(out.failed, failure{x.ID, x.Topic, x.Attempts + 1, a.err})
			continue
		}
		out.sentIDs = append(out.sentIDs, x.ID)
		out.sentPartitions = append(out.sentPartitions, a.rec.Partition)
		out.sentOffsets = append(out.sentOffsets, a.rec.Offset)
	}
	return out
}

// aborted reports whether the batch ended before Kafka answered every row.
func (o outcome) aborted() bool {
	for _, f := range o.failed {
		if f.err == errAborted {
			return true
		}
	}
	return false
}

// record writes the outcome into the claim transaction: sent rows get their
// position, failed rows their error and next attempt time.
func (o outcome) record(ctx context.Context, tx pgx.Tx, policy retry.Policy, now *time.Time) error {
	if o.aborted() {
		return errAborted
	}
	if len(o.sentIDs) > 0 {
		if _, err := tx.Exec(ctx, markSentQuery, o.sentIDs, o.sentPartitions, o.sentOffsets, now); err != nil {
			return fmt.Errorf("mark sent: %w", err)
		}
	}
	if len(o.failed) > 0 {
		ids := make([]int64, len(o.failed))
		errs := make([]string, len(o.failed))
		delays := make([]int64, len(o.failed))
		for i, f := range o.failed {
			ids[i] = f.id
			errs[i] = f.err.Error()
			delays[i] = policy.Next(f.attempt).Microseconds()
		}
		if _, err := tx.Exec(ctx, markFailedQuery, ids, errs, delays, now); err != nil {
			return fmt.Errorf("mark failed: %w", err)
		}
	}
	return nil
}
