package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

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
	// rejected are rows Kafka refused with their record batch (see
	// retry.RejectsBatch): not yet blamed, they are produced again alone
	// (retryAlone) before the outcome is recorded.
	rejected []failure
	aborted  bool  // the batch ended before Kafka answered every row
	lost     error // the batch's transaction ended before the batch did
}

type failure struct {
	row       row
	err       error
	kind      retry.Kind
	partition int32 // where the client put the record; -1 if nowhere
}

// The gate keeps retries alone alone. Each produce holds one unit of it
// while its records are in the client; a retry alone holds all of it, so
// while it runs the client holds no other record of this relay, and each
// record it produces, one at a time, is a record batch of its own.
const gateAll = 1 << 30

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
//
// Records go to the client in groups (see groups): one group, unless a
// topic's limit is smaller than the client's own batches may be.
func (r *Relay) produce(ctx context.Context, rows []row, stallAfter time.Duration, stalled func(since time.Time)) outcome {
	var out outcome
	verdicts := r.topicVerdicts(ctx, rows)
	recs := make([]*kgo.Record, len(rows))
	for i, x := range rows {
		err := expiry(x)
		var rec *kgo.Record
		if err == nil {
			rec, err = r.record(x)
		}
		if err == nil {
			err = r.checkTopicSettings(rec, verdicts[rec.Topic])
		}
		if err != nil {
			out.failed = append(out.failed, failure{x, err, retry.Classify(err), -1})
			continue
		}
		recs[i] = rec
	}
	// The bound starts once the topic checks are done: they have their
	// own, and a batch's first use of a topic must not eat into it.
	records, giveUp := r.giveUpAfter(ctx)
	defer giveUp()
	if err := r.gate.Acquire(records, 1); err != nil {
		// Another batch's retry alone held the client for the whole
		// batch timeout: the rows wait, as in an outage.
		if ctx.Err() != nil {
			out.aborted = true
			return out
		}
		err = r.gaveUp(ctx, records, err)
		for i, rec := range recs {
			if rec != nil {
				out.failed = append(out.failed, failure{rows[i], err, retry.Classify(err), -1})
			}
		}
		return out
	}
	defer r.gate.Release(1)

	type answer struct {
		i   int
		rec *kgo.Record
		err error
	}
	answers := make(chan answer, len(rows))
	start := time.Now()
	stall := time.NewTicker(stallAfter)
	defer stall.Stop()
	answered := false
	for _, group := range r.groups(recs, verdicts) {
		for _, i := range group {
			r.kafka.Produce(records, recs[i], func(rec *kgo.Record, err error) {
				answers <- answer{i, rec, err}
			})
		}
		aloneInGroup := map[string]int{} // topic → records of it in the group
		bytesInGroup := map[string]int{}
		failedInGroup := map[string]bool{}
		for _, i := range group {
			t := recs[i].Topic
			aloneInGroup[t]++
			if v := verdicts[t]; v.maxBytes == 0 && v.fits == 0 {
				bytesInGroup[t] += batchSize(recs[i]) // the limit is unknown: see topicGroupTaken
			}
		}
		for pending := len(group); pending > 0; {
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
				failedInGroup[x.Topic] = true
				err := r.explain(topicMissing(verdicts[x.Topic], x.Topic, r.gaveUp(ctx, records, a.err)))
				if p, ok := chosenPartition(recs[a.i]); ok && partitionChoiceRefused(a.err) {
					err = r.partitionRefused(ctx, x.Topic, p, a.err)
				}
				f := failure{x, err, retry.Classify(err), a.rec.Partition}
				if retry.RejectsBatch(err) {
					out.rejected = append(out.rejected, f)
				} else {
					out.failed = append(out.failed, f)
				}
				continue
			}
			if aloneInGroup[x.Topic] == 1 {
				r.topicTook(x.Topic, batchSize(a.rec))
			}
			out.sentIDs = append(out.sentIDs, x.ID)
			out.sentPartitions = append(out.sentPartitions, a.rec.Partition)
			out.sentOffsets = append(out.sentOffsets, a.rec.Offset)
		}
		for topic, n := range bytesInGroup {
			if !failedInGroup[topic] {
				r.topicGroupTaken(topic, n)
			}
		}
	}
	return out
}

// unknownLimitGroup bounds the bytes of a topic whose max.message.bytes the
// relay could not read (DescribeConfigs denied or timed out) that it hands
// the client at once, until it has seen what the topic takes. Kafka's
// default limit is about 1 MB, but a topic may have less; 64 KiB keeps the
// records a rejection fails few. Each group is one round trip, so while
// the topic rejects nothing as too large, the bound doubles with each
// group the topic took whole, up to the client's own limit (see
// topicVerdict.grown).
const unknownLimitGroup = 64 << 10

// groups splits a batch's records into groups that produce hands the client
// one after another, so that the records of a topic in the client at once
// never add up to more than the topic takes. That is the client's own job
// when it knows the topic's limit, but it reads the limit once, when it
// first meets a partition: when the relay learnt the limit later, or could
// not read it at all, the client's batches may be larger than the topic
// takes, and the broker would reject each whole batch. Such a topic's
// records go in groups within the limit it has (maxBytes), or, when that is
// unknown, within the largest record batch of one row it has taken
// (fits) once it has rejected one as too large, or else unknownLimitGroup
// growing with each group the topic took (grown). A record larger than
// that goes in a group of its own for its topic. Groups keep the rows'
// order within each topic.
func (r *Relay) groups(recs []*kgo.Record, verdicts map[string]topicVerdict) [][]int {
	budget := map[string]int{} // 0: no bound beyond the client's
	used := map[string]int{}
	at := map[string]int{} // the group the topic's records go to now
	var groups [][]int
	for i, rec := range recs {
		if rec == nil {
			continue
		}
		t := rec.Topic
		b, ok := budget[t]
		if !ok {
			b = r.groupBudget(t, verdicts[t])
			budget[t] = b
		}
		size := 0
		if b > 0 {
			size = batchSize(rec)
			if used[t] > 0 && used[t]+size > b {
				at[t]++
				used[t] = 0
			}
			used[t] += size
		}
		for len(groups) <= at[t] {
			groups = append(groups, nil)
		}
		groups[at[t]] = append(groups[at[t]], i)
	}
	return groups
}

// groupBudget is how many bytes of topic's records may be in the client at
// once: 0 when the client's own batches fit the topic.
func (r *Relay) groupBudget(topic string, v topicVerdict) int {
	switch {
	case v.maxBytes > 0 && r.limits.clientFits(topic, v.maxBytes):
		return 0
	case v.maxBytes > 0:
		return int(v.maxBytes)
	case v.fits > 0:
		return int(min(v.fits, unknownLimitGroup))
	default:
		return max(unknownLimitGroup, int(v.grown))
	}
}

// retryAlone produces each row of out.rejected again in a record batch of
// its own, and records what happened. A row Kafka rejects even alone is at
// fault: it is escalated at once with a reason that says so. The others
// were rejected for their neighbours and are delivered.
//
// It runs between waves (see produceWaves), so the later rows of each
// row's key are still waiting for it: per-key order holds. Holding all of
// the gate, it waits for the other batches' records to be answered and
// keeps new ones out while it runs, so each record really is alone; it
// hands them over one at a time and flushes each (the client may linger).
// The wait and the retries share one BatchTimeout; rows it has no time for
// are left as in an outage, with no attempt spent.
func (r *Relay) retryAlone(ctx context.Context, out *outcome) {
	rejected := out.rejected
	out.rejected = nil
	if len(rejected) == 0 {
		return
	}
	alone, giveUp := r.giveUpAfter(ctx)
	defer giveUp()
	if err := r.gate.Acquire(alone, gateAll); err != nil {
		if ctx.Err() != nil {
			out.aborted = true
			return
		}
		err = r.gaveUp(ctx, alone, err)
		for _, f := range rejected {
			out.failed = append(out.failed, failure{f.row, err, retry.Classify(err), -1})
		}
		return
	}
	defer r.gate.Release(gateAll)
	var topics []string
	for _, f := range rejected {
		if !slices.Contains(topics, f.row.Topic) {
			topics = append(topics, f.row.Topic)
		}
		if errors.Is(f.err, kerr.MessageTooLarge) || errors.Is(f.err, kerr.RecordListTooLarge) {
			r.topicTooLarge(f.row.Topic)
		}
	}
	r.logger.Info("batch_rejected", "topics", strings.Join(topics, ","), "rows", len(rejected), "error", rejected[0].err,
		"action", "producing each row again alone")
	for _, f := range rejected {
		// Its replaced headers were counted the first time it was made.
		rec, _, err := buildRecord(f.row)
		if err != nil { // it made one before
			out.failed = append(out.failed, failure{f.row, err, retry.Classify(err), -1})
			continue
		}
		done := make(chan struct{})
		var got *kgo.Record
		r.kafka.Produce(alone, rec, func(rec *kgo.Record, err error) {
			got, f.err = rec, err
			close(done)
		})
		_ = r.kafka.Flush(alone)
		select {
		case <-done:
		case <-ctx.Done():
			out.aborted = true
			return
		}
		if f.err == nil {
			r.topicTook(rec.Topic, batchSize(got))
			out.sentIDs = append(out.sentIDs, f.row.ID)
			out.sentPartitions = append(out.sentPartitions, got.Partition)
			out.sentOffsets = append(out.sentOffsets, got.Offset)
			continue
		}
		err = r.explain(topicMissing(r.knownVerdict(rec.Topic), rec.Topic, r.gaveUp(ctx, alone, f.err)))
		if retry.RejectsBatch(err) {
			err = r.refusedAlone(rec, err)
		}
		out.failed = append(out.failed, failure{f.row, err, retry.Classify(err), got.Partition})
	}
}

// refusedAloneError is a row Kafka refused in a record batch of its own: it
// is the row's fault. It is retry.RowFatalError.
type refusedAloneError struct{ error }

func (e refusedAloneError) Unwrap() error  { return e.error }
func (e refusedAloneError) RowFatal() bool { return true }

// refusedAlone says why a row that Kafka refused alone cannot be delivered,
// and what a human can do about it.
func (r *Relay) refusedAlone(rec *kgo.Record, err error) error {
	size := batchSize(rec)
	what := fmt.Sprintf("Kafka refused the row alone, in a record batch of its own (%d bytes: key %d, payload %d bytes, %d headers), for topic %s",
		size, len(rec.Key), len(rec.Value), len(rec.Headers), rec.Topic)
	var hint string
	switch {
	case errors.Is(err, kerr.MessageTooLarge), errors.Is(err, kerr.RecordListTooLarge):
		limit := "which the relay could not read (no permission to describe the topic's configs, or no answer)"
		if v := r.knownVerdict(rec.Topic).maxBytes; v > 0 {
			limit = fmt.Sprintf("%d", v)
		}
		hint = fmt.Sprintf(": it is larger than the topic's max.message.bytes, %s: shrink the payload or raise the topic's limit", limit)
	case errors.Is(err, kerr.PolicyViolation):
		hint = ": the broker's policy refuses it: see the broker's log for the policy's reason"
	default:
		hint = ": the broker finds the record invalid: check its key, payload and headers"
	}
	return refusedAloneError{fmt.Errorf("%s%s (%w)", what, hint, err)}
}

// errClockSkew explains INVALID_TIMESTAMP. The relay leaves each record's
// timestamp to the client (the time of the produce), so the broker finding
// it out of range means the clocks disagree.
var errClockSkew = errors.New("Kafka refused the record's timestamp: the relay host's clock is probably skewed against the broker's " +
	"(the topic's message.timestamp.*.ms bounds): fix the clock; the rows wait, no attempt is spent")

// explain adds what a human needs to act on err: the cause of a clock
// skew, and the last connection failure the client retried silently.
func (r *Relay) explain(err error) error {
	if errors.Is(err, kerr.InvalidTimestamp) {
		return fmt.Errorf("%w (%w)", errClockSkew, err)
	}
	if retry.Classify(err) == retry.Outage && !errors.Is(err, context.Canceled) {
		if cause := r.watch.lastCause(); cause != nil {
			return fmt.Errorf("%w; last failure: %v", err, cause)
		}
	}
	return err
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
// does not exist. When the relay's own check (v) found the topic, the answer
// is about a partition the broker does not have now (it is being created,
// moved or loaded): an outage of the partition, not the row's problem.
func topicMissing(v topicVerdict, topic string, err error) error {
	if !errors.Is(err, kerr.UnknownTopicOrPartition) {
		return err
	}
	if !v.checked.IsZero() && !v.failed {
		return partitionUnknownError{fmt.Errorf("topic %s exists, but the broker does not know the record's partition now: %w", topic, err)}
	}
	return fmt.Errorf("%w: topic %s: create it, or let the brokers create topics (%w)", errTopicMissing, topic, err)
}

// partitionUnknownError is UNKNOWN_TOPIC_OR_PARTITION for a topic the relay
// has seen exist. It is retry.OutageError.
type partitionUnknownError struct{ error }

func (e partitionUnknownError) Unwrap() error { return e.error }
func (e partitionUnknownError) Outage() bool  { return true }

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
