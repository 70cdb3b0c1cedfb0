package relay

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/retry"
)

// outcome is what happened to each row of a batch.
type outcome struct {
	sentIDs        []int64
	sentPartitions []int32
	sentOffsets    []int64
	failed         []failure
	aborted        bool  // the batch ended before Kafka answered every row
	lost           error // the batch's transaction ended before the batch did
}

type failure struct {
	row  row
	err  error
	kind retry.Kind
}

// produce hands every row of the batch to the client and waits for all of
// Kafka's answers. Rows of one key never share a wave (see produceWaves), so
// a failure cannot let a later row of the same key overtake an earlier one.
//
// The client retries retriable errors on its own until the delivery timeout.
// Being idempotent it would never, on its own, fail a record it has written
// but not heard back about: a broker that takes a produce request and never
// answers would hold the batch, and its partitions, for ever. So the records
// carry a context that ends after BatchTimeout (see giveUpAfter), and while
// Kafka has answered nothing, stalled is called every stallAfter. If ctx
// ends first (shutdown timeout) the outcome is marked aborted and the caller
// rolls the batch back.
func (r *Relay) produce(ctx context.Context, rows []row, stallAfter time.Duration, stalled func(since time.Time)) outcome {
	var out outcome
	verdicts := r.topicVerdicts(ctx, rows)
	recs := make([]*kgo.Record, len(rows))
	for i, x := range rows {
		rec, err := r.record(x)
		if err == nil {
			err = r.checkTopicSettings(rec, verdicts[rec.Topic])
		}
		if err != nil {
			out.failed = append(out.failed, failure{x, err, retry.Classify(err)})
			continue
		}
		recs[i] = rec
	}
	// The bound starts once the topic checks are done: they have their
	// own, and a batch's first use of a topic must not eat into it.
	records, giveUp := r.giveUpAfter(ctx)
	defer giveUp()

	type answer struct {
		i   int
		rec *kgo.Record
		err error
	}
	answers := make(chan answer, len(rows))
	pending := 0
	for i, rec := range recs {
		if rec == nil {
			continue
		}
		pending++
		r.kafka.Produce(records, rec, func(rec *kgo.Record, err error) {
			answers <- answer{i, rec, err}
		})
	}
	start := time.Now()
	stall := time.NewTicker(stallAfter)
	defer stall.Stop()
	answered := false
	for pending > 0 {
		var a answer
		select {
		case a = <-answers:
			pending--
			answered = true
		case <-stall.C:
			if !answered {
				stalled(start)
			}
			continue
		case <-ctx.Done():
			out.aborted = true
			return out
		}
		x := rows[a.i]
		if a.err != nil {
			err := topicMissing(x.Topic, r.gaveUp(ctx, records, a.err))
			out.failed = append(out.failed, failure{x, err, retry.Classify(err)})
			continue
		}
		out.sentIDs = append(out.sentIDs, x.ID)
		out.sentPartitions = append(out.sentPartitions, a.rec.Partition)
		out.sentOffsets = append(out.sentOffsets, a.rec.Offset)
	}
	return out
}

// giveUpAfter returns the context of a batch's records: it ends BatchTimeout
// from now, or when ctx ends.
//
// Ending it is how the relay gives up on records the client has written but
// never heard back about. NewKafkaClient sets
// kgo.AllowIdempotentProduceCancellation, so the client fails such records
// with the context's error and bumps its producer epoch before it produces
// again; without that option it would keep them, and keep resending them,
// and every record produced later to their partitions would queue behind
// them. The relay then counts the unanswered rows as an outage (Classify:
// context errors are Outage): they stay pending with no attempt spent. The
// client fails the records buffered behind them on the same partitions too,
// with the same error, so another batch in flight sees an outage as well,
// never a row failure.
//
// Per-key order still holds. A record given up on may yet land (the broker
// may have written it), but only as a duplicate of its row: the row stays
// pending, so no later row of its key is claimed until a new copy of it has
// been acknowledged. And the client no longer holds the record, so the next
// claim's copy of the row does not wait behind it. Purging the topic instead
// (PurgeTopicsFromProducing) would fail the other batches' records of the
// topic and restart sequence numbers under the same epoch; replacing the
// client would take it from its owner, who also uses it for health checks
// and verify.
func (r *Relay) giveUpAfter(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.cfg.BatchTimeout)
}

// errBatchTimeout replaces the context error of records the relay gave up
// on. It wraps context.DeadlineExceeded, so it classifies as an outage.
var errBatchTimeout = fmt.Errorf("no answer from Kafka within the batch timeout: %w", context.DeadlineExceeded)

// gaveUp returns err, or errBatchTimeout if err is the records' context
// ending at the batch timeout rather than at shutdown.
func (r *Relay) gaveUp(ctx, records context.Context, err error) error {
	if errors.Is(err, context.DeadlineExceeded) && records.Err() != nil && ctx.Err() == nil {
		return fmt.Errorf("%w (%v)", errBatchTimeout, r.cfg.BatchTimeout)
	}
	return err
}

// topicVerdicts returns what the relay knows of the settings of the
// batch's topics, one lookup a topic rather than one a row. The first checks
// of topics the relay has not used yet run all at once, so that a batch that
// is the first to use many topics waits for one check, at most
// topicCheckTimeout, not for one per topic: its transaction is silent
// meanwhile, within the stall bound (see stall.go).
func (r *Relay) topicVerdicts(ctx context.Context, rows []row) map[string]topicVerdict {
	var topics []string
	seen := map[string]bool{}
	for _, x := range rows {
		if !seen[x.Topic] && validTopic(x.Topic) == nil {
			seen[x.Topic] = true
			topics = append(topics, x.Topic)
		}
	}
	found := make([]topicVerdict, len(topics))
	if len(topics) == 1 {
		found[0] = r.topicSettings(ctx, topics[0])
	} else {
		var wg sync.WaitGroup
		for i, topic := range topics {
			wg.Go(func() { found[i] = r.topicSettings(ctx, topic) })
		}
		wg.Wait()
	}
	verdicts := make(map[string]topicVerdict, len(topics))
	for i, topic := range topics {
		verdicts[topic] = found[i]
	}
	return verdicts
}

// checkTopicSettings refuses a record its topic cannot take: larger than the
// topic's max.message.bytes (caught here so it never reaches a batch and
// fails its neighbours) or, in strict mode, bound for a topic that is not
// durable.
func (r *Relay) checkTopicSettings(rec *kgo.Record, v topicVerdict) error {
	if size := batchSize(rec); v.maxBytes > 0 && size > int(v.maxBytes) {
		return badRow("row is %d bytes as a record batch (key %d, payload %d bytes); topic %s accepts at most %d (max.message.bytes): shrink the payload or raise the topic's limit",
			size, len(rec.Key), len(rec.Value), rec.Topic, v.maxBytes)
	}
	if r.cfg.Durability == DurabilityStrict && len(v.problems) > 0 {
		return badRow("topic %s is not durable (%s); strict durability refuses to produce to it", rec.Topic, strings.Join(v.problems, "; "))
	}
	return nil
}

// outage reports whether the batch failed as a whole for reasons that are not
// the rows' own: nothing went through and no failure was the row's fault.
// Then no row spends an attempt.
func (o outcome) outage() bool {
	if len(o.sentIDs) > 0 {
		return false
	}
	transient := false
	for _, f := range o.failed {
		if f.kind != retry.RowFatal && !errors.Is(f.err, errTopicMissing) {
			transient = true
		}
	}
	return transient
}

// errTopicMissing marks a row whose topic the cluster does not have. That is
// the row's own problem, not an outage, even when every row of a batch has
// it: the rows spend attempts and are escalated with the reason, rather than
// waiting for ever while the relay reports Kafka down.
var errTopicMissing = errors.New("the topic does not exist")

// topicMissing says so in err when the broker answered that the row's topic
// does not exist.
func topicMissing(topic string, err error) error {
	if !errors.Is(err, kerr.UnknownTopicOrPartition) {
		return err
	}
	return fmt.Errorf("%w: topic %s: create it, or let the brokers create topics (%w)", errTopicMissing, topic, err)
}

// verdicts splits the failures into rows to escalate now and rows to retry.
// During an outage only row-fatal failures count; otherwise outage-kind
// failures (a connection dropped) still spend no attempt.
func (o outcome) verdicts(maxAttempts int) (escalate, retryLater []failure) {
	outage := o.outage()
	for _, f := range o.failed {
		switch {
		case f.kind == retry.RowFatal:
			escalate = append(escalate, f)
		case outage || f.kind == retry.Outage:
			// not the row's fault: it stays as it was
		case f.row.Attempts+1 >= maxAttempts:
			escalate = append(escalate, f)
		default:
			retryLater = append(retryLater, f)
		}
	}
	return escalate, retryLater
}

// record writes the outcome into the claim transaction: sent rows get their
// position, retriable failures their error and next attempt time, and rows
// past saving move to stuck_messages.
func (o outcome) record(ctx context.Context, tx pgx.Tx, cfg Config, now *time.Time) (escalated []failure, err error) {
	if o.lost != nil {
		return nil, o.lost
	}
	if o.aborted {
		return nil, errAborted
	}
	switch {
	case len(o.sentIDs) == 0:
	case cfg.DeleteOnSend:
		if _, err := tx.Exec(ctx, deleteSentQuery, o.sentIDs); err != nil {
			return nil, fmt.Errorf("delete sent: %w", err)
		}
	default:
		if _, err := tx.Exec(ctx, markSentQuery, o.sentIDs, o.sentPartitions, o.sentOffsets, now); err != nil {
			return nil, fmt.Errorf("mark sent: %w", err)
		}
	}
	escalate, retryLater := o.verdicts(cfg.MaxAttempts)
	if len(retryLater) > 0 {
		ids := make([]int64, len(retryLater))
		errs := make([]string, len(retryLater))
		delays := make([]int64, len(retryLater))
		for i, f := range retryLater {
			ids[i] = f.row.ID
			errs[i] = f.err.Error()
			delays[i] = cfg.Retry.Next(f.row.Attempts + 1).Microseconds()
		}
		if _, err := tx.Exec(ctx, markFailedQuery, ids, errs, delays, now); err != nil {
			return nil, fmt.Errorf("mark failed: %w", err)
		}
	}
	if len(escalate) > 0 {
		ids := make([]int64, len(escalate))
		errs := make([]string, len(escalate))
		kinds := make([]string, len(escalate))
		for i, f := range escalate {
			ids[i] = f.row.ID
			errs[i] = f.err.Error()
			kinds[i] = f.kind.String()
		}
		if _, err := tx.Exec(ctx, escalateQuery, ids, errs, kinds, now); err != nil {
			return nil, fmt.Errorf("escalate: %w", err)
		}
	}
	return escalate, nil
}
