package kafkasink

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

	"github.com/outboxrelay/relay/internal/pgstore"
)

// Result is what Kafka made of the rows handed to Produce or RetryAlone.
type Result struct {
	// SentIDs, SentPartitions and SentOffsets are the rows Kafka
	// acknowledged and where it put them.
	SentIDs        []int64
	SentPartitions []int32
	SentOffsets    []int64
	Failed         []Failure
	// Rejected are rows Kafka refused with their record batch (see
	// RejectsBatch): not yet blamed, they must be produced again alone
	// (RetryAlone) before they are.
	Rejected []Failure
	// Aborted is true when ctx ended before Kafka answered every row.
	Aborted bool
}

// Failure is a row that was not delivered, and why.
type Failure struct {
	Row       pgstore.Row
	Err       error
	Kind      Kind
	Partition int32 // where the client put the record; -1 if nowhere
}

// The gate keeps retries alone alone. Each produce holds one unit of it
// while its records are in the client; a retry alone holds all of it, so
// while it runs the client holds no other record of this relay, and each
// record it produces, one at a time, is a record batch of its own.
const gateAll = 1 << 30

// Produce hands every row to the client and waits for all of Kafka's
// answers. The caller keeps rows of one key out of the same call (see the
// relay's produceWaves), so a failure cannot let a later row of the same
// key overtake an earlier one.
//
// Before a row reaches the client it must pass Options.Refuse, become a
// record (buildRecord) and fit its topic's settings (checkTopicSettings);
// a row that does not is a Failure at once.
//
// The client retries retriable errors on its own until the records' context
// ends: ProduceTimeout after they were handed over (see produceWithin), or
// BatchTimeout after Produce began (see giveUpAfter). Being idempotent it
// would never, on its own, fail a record it has written but not heard back
// about: a broker that takes a produce request and never answers would hold
// the batch, and its partitions, for ever; the context ending fails it.
// While Kafka has answered nothing, Options.Stalled is called every
// StallAfter.
// If ctx ends first (shutdown timeout) the result is marked Aborted and the
// caller rolls the batch back.
//
// Records go to the client in groups (see groups): one group, unless a
// topic's limit is smaller than the client's own batches may be.
func (s *Sink) Produce(ctx context.Context, rows []pgstore.Row) Result {
	var out Result
	verdicts := s.topicVerdicts(ctx, rows)
	recs := make([]*kgo.Record, len(rows))
	now := time.Now() // one clock read a batch, for stampWithin
	for i, x := range rows {
		var err error
		if s.opts.Refuse != nil {
			err = s.opts.Refuse(x)
		}
		var rec *kgo.Record
		if err == nil {
			rec, err = s.recordOf(x)
		}
		if err == nil {
			err = s.checkTopicSettings(rec, verdicts[rec.Topic])
		}
		if err != nil {
			out.Failed = append(out.Failed, Failure{x, err, Classify(err), -1})
			continue
		}
		stampWithin(rec, verdicts[rec.Topic].oldest, now)
		recs[i] = rec
	}
	// The bound starts once the topic checks are done: they have their
	// own, and a batch's first use of a topic must not eat into it.
	records, giveUp := s.giveUpAfter(ctx)
	defer giveUp()
	if err := s.gate.Acquire(records, 1); err != nil {
		// Another batch's retry alone held the client for the whole
		// batch timeout: the rows wait, as in an outage.
		if ctx.Err() != nil {
			out.Aborted = true
			return out
		}
		err = s.gaveUp(ctx, records, err)
		for i, rec := range recs {
			if rec != nil {
				out.Failed = append(out.Failed, Failure{rows[i], err, Classify(err), -1})
			}
		}
		return out
	}
	defer s.gate.Release(1)

	type answer struct {
		i   int
		rec *kgo.Record
		err error
	}
	answers := make(chan answer, len(rows))
	start := time.Now()
	stall := time.NewTicker(s.opts.StallAfter)
	defer stall.Stop()
	answered := false
	for _, group := range s.groups(recs, verdicts) {
		within, done := s.produceWithin(records)
		defer done()
		for _, i := range group {
			s.client.Produce(within, recs[i], func(rec *kgo.Record, err error) {
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
				if !answered && s.opts.Stalled != nil {
					s.opts.Stalled(start)
				}
				continue
			case <-ctx.Done():
				out.Aborted = true
				return out
			}
			x := rows[a.i]
			if a.err != nil {
				failedInGroup[x.Topic] = true
				err := s.explain(topicMissing(verdicts[x.Topic], x.Topic, s.gaveUp(ctx, within, a.err)))
				if p, ok := chosenPartition(recs[a.i]); ok && partitionChoiceRefused(a.err) {
					err = s.partitionRefused(ctx, x.Topic, p, a.err)
				}
				f := Failure{x, err, Classify(err), a.rec.Partition}
				if RejectsBatch(err) {
					out.Rejected = append(out.Rejected, f)
				} else {
					out.Failed = append(out.Failed, f)
				}
				continue
			}
			if aloneInGroup[x.Topic] == 1 {
				s.topicTook(x.Topic, batchSize(a.rec))
			}
			out.SentIDs = append(out.SentIDs, x.ID)
			out.SentPartitions = append(out.SentPartitions, a.rec.Partition)
			out.SentOffsets = append(out.SentOffsets, a.rec.Offset)
		}
		for topic, n := range bytesInGroup {
			if !failedInGroup[topic] {
				s.topicGroupTaken(topic, n)
			}
		}
	}
	return out
}

// stampWithin gives rec the time of the produce as its timestamp when its
// own (the row's created_at, or its mapped timestamp) is older than the
// topic takes, less a tenth for the clocks' skew: the topic would refuse it
// with INVALID_TIMESTAMP, and since a waiting row only grows older, its
// partition would never move again. oldest is the topic's bound
// (topicConfig.oldest); 0: none.
func stampWithin(rec *kgo.Record, oldest time.Duration, now time.Time) {
	if oldest > 0 && now.Sub(rec.Timestamp) > oldest-oldest/10 {
		rec.Timestamp = now
	}
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
func (s *Sink) groups(recs []*kgo.Record, verdicts map[string]topicVerdict) [][]int {
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
			b = s.groupBudget(t, verdicts[t])
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
func (s *Sink) groupBudget(topic string, v topicVerdict) int {
	switch {
	case v.maxBytes > 0 && s.limits.clientFits(topic, v.maxBytes):
		return 0
	case v.maxBytes > 0:
		return int(v.maxBytes)
	case v.fits > 0:
		return int(min(v.fits, unknownLimitGroup))
	default:
		return max(unknownLimitGroup, int(v.grown))
	}
}

// RetryAlone produces each rejected row (Result.Rejected) again in a
// record batch of its own. A row Kafka rejects even alone is at fault: it
// fails row-fatal, with a reason that says so. The others were rejected for
// their neighbours and are delivered.
//
// The caller runs it before any later row of a rejected row's key is
// produced, so per-key order holds. Holding all of the gate, it waits for
// the other batches' records to be answered and keeps new ones out while it
// runs, so each record really is alone; it hands them over one at a time
// and flushes each (the client may linger). The wait and the retries share
// one BatchTimeout; rows it has no time for fail as in an outage.
func (s *Sink) RetryAlone(ctx context.Context, rejected []Failure) Result {
	var out Result
	if len(rejected) == 0 {
		return out
	}
	alone, giveUp := s.giveUpAfter(ctx)
	defer giveUp()
	if err := s.gate.Acquire(alone, gateAll); err != nil {
		if ctx.Err() != nil {
			out.Aborted = true
			return out
		}
		err = s.gaveUp(ctx, alone, err)
		for _, f := range rejected {
			out.Failed = append(out.Failed, Failure{f.Row, err, Classify(err), -1})
		}
		return out
	}
	defer s.gate.Release(gateAll)
	var topics []string
	for _, f := range rejected {
		if !slices.Contains(topics, f.Row.Topic) {
			topics = append(topics, f.Row.Topic)
		}
		if errors.Is(f.Err, kerr.MessageTooLarge) || errors.Is(f.Err, kerr.RecordListTooLarge) {
			s.topicTooLarge(f.Row.Topic)
		}
	}
	s.logger.Info("batch_rejected", "topics", strings.Join(topics, ","), "rows", len(rejected), "error", rejected[0].Err,
		"action", "producing each row again alone")
	for _, f := range rejected {
		// Its replaced headers were counted the first time it was made.
		rec, _, err := buildRecord(f.Row)
		if err != nil { // it made one before
			out.Failed = append(out.Failed, Failure{f.Row, err, Classify(err), -1})
			continue
		}
		stampWithin(rec, s.knownVerdict(rec.Topic).oldest, time.Now())
		done := make(chan struct{})
		var got *kgo.Record
		within, cancel := s.produceWithin(alone)
		s.client.Produce(within, rec, func(rec *kgo.Record, err error) {
			got, f.Err = rec, err
			close(done)
		})
		_ = s.client.Flush(within)
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
			cancel()
			out.Aborted = true
			return out
		}
		if f.Err == nil {
			s.topicTook(rec.Topic, batchSize(got))
			out.SentIDs = append(out.SentIDs, f.Row.ID)
			out.SentPartitions = append(out.SentPartitions, got.Partition)
			out.SentOffsets = append(out.SentOffsets, got.Offset)
			continue
		}
		err = s.explain(topicMissing(s.knownVerdict(rec.Topic), rec.Topic, s.gaveUp(ctx, within, f.Err)))
		if RejectsBatch(err) {
			err = s.refusedAlone(rec, err)
		}
		out.Failed = append(out.Failed, Failure{f.Row, err, Classify(err), got.Partition})
	}
	return out
}

// refusedAloneError is a row Kafka refused in a record batch of its own: it
// is the row's fault. It is a RowFatalError.
type refusedAloneError struct{ error }

func (e refusedAloneError) Unwrap() error  { return e.error }
func (e refusedAloneError) RowFatal() bool { return true }

// refusedAlone says why a row that Kafka refused alone cannot be delivered,
// and what a human can do about it.
func (s *Sink) refusedAlone(rec *kgo.Record, err error) error {
	size := batchSize(rec)
	what := fmt.Sprintf("Kafka refused the row alone, in a record batch of its own (%d bytes: key %d, payload %d bytes, %d headers), for topic %s",
		size, len(rec.Key), len(rec.Value), len(rec.Headers), rec.Topic)
	var hint string
	switch {
	case errors.Is(err, kerr.MessageTooLarge), errors.Is(err, kerr.RecordListTooLarge):
		limit := "which the relay could not read (no permission to describe the topic's configs, or no answer)"
		if v := s.knownVerdict(rec.Topic).maxBytes; v > 0 {
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

// errClockSkew explains INVALID_TIMESTAMP. A record's timestamp is its
// row's (recordTime), unless it is older than the topic takes
// (stampWithin): the broker finds it out of range when the relay could not
// read the topic's bounds, or when a clock is skewed.
var errClockSkew = errors.New("Kafka refused the record's timestamp, the row's created_at (or its mapped timestamp): " +
	"it is outside the topic's message.timestamp.before.max.ms / after.max.ms (or message.timestamp.difference.max.ms) bounds, " +
	"or the database's clock is skewed against the broker's: raise the topic's bounds or fix the clock; the rows wait, no attempt is spent")

// explain adds what a human needs to act on err: the cause of a clock
// skew, and the last connection failure the client retried silently.
func (s *Sink) explain(err error) error {
	if errors.Is(err, kerr.InvalidTimestamp) {
		return fmt.Errorf("%w (%w)", errClockSkew, err)
	}
	if Classify(err) == Outage && !errors.Is(err, context.Canceled) {
		if cause := s.watch.lastCause(); cause != nil {
			return fmt.Errorf("%w; last failure: %v", err, cause)
		}
	}
	return err
}

// giveUpAfter returns the context of a call of Produce or RetryAlone: it
// ends BatchTimeout from now, or when ctx ends. Each record the call hands
// the client carries a context of it that ends sooner (produceWithin).
//
// Ending a record's context is how the relay gives up on records the client
// has written but never heard back about. NewClient sets
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
func (s *Sink) giveUpAfter(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.opts.BatchTimeout)
}

// errBatchTimeout replaces the context error of records the relay gave up
// on. It wraps context.DeadlineExceeded, so it classifies as an outage.
var errBatchTimeout = fmt.Errorf("no answer from Kafka within the batch timeout: %w", context.DeadlineExceeded)

// errProduceTimeout replaces the context error of records whose produce
// timeout passed (produceWithin). It wraps kgo.ErrRecordTimeout, what the
// client's own delivery timeout reported, so it classifies as that did: an
// outage.
var errProduceTimeout = fmt.Errorf("no answer from Kafka within the produce timeout: %w", kgo.ErrRecordTimeout)

// produceWithin returns the context of records handed to the client now: it
// ends ProduceTimeout from now, with errProduceTimeout as its cause, or
// when records (giveUpAfter's) ends. It is the delivery timeout: the
// client's own, kgo.RecordDeliveryTimeout, counts from Record.Timestamp,
// the row's created_at, so it would fail a backlog's records before
// sending them (see NewClient).
//
// The client checks the context of a batch's first record where it checked
// its delivery timeout: before it writes the batch, and when a request
// holding it fails; it then fails the batch, and the partition's records
// buffered behind it, with the context's error (gaveUp names the timeout).
// Unlike the delivery timeout, the context also ends a request written and
// not yet answered: the client abandons the request when the context of the
// first record it carries ends (kgo.AllowIdempotentProduceCancellation).
// A record further back is failed only when that first record's context
// ends, or when the request is answered (it may then be delivered after
// all). Within a partition's batch the first record was handed over first,
// so its context ends no later; but a request may start with another
// partition's batch handed over after ours (another wave's, another
// batch's), whose context ends up to one ProduceTimeout later. So a record
// handed over is answered, or failed as an outage, by its own deadline
// (ProduceTimeout, or BatchTimeout when that comes first) or, in a request
// led by a later record, by that record's: at most one ProduceTimeout
// later. Produce stops waiting at once when ctx (shutdown) ends.
func (s *Sink) produceWithin(records context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(records, s.opts.ProduceTimeout, errProduceTimeout)
}

// gaveUp returns err, or errProduceTimeout or errBatchTimeout if err is the
// records' context ending at the produce or the batch timeout rather than
// at shutdown.
func (s *Sink) gaveUp(ctx, records context.Context, err error) error {
	if !errors.Is(err, context.DeadlineExceeded) || records.Err() == nil || ctx.Err() != nil {
		return err
	}
	if context.Cause(records) == errProduceTimeout {
		return fmt.Errorf("%w (%v)", errProduceTimeout, s.opts.ProduceTimeout)
	}
	return fmt.Errorf("%w (%v)", errBatchTimeout, s.opts.BatchTimeout)
}

// topicVerdicts returns what the relay knows of the settings of the
// batch's topics, one lookup a topic rather than one a row. The first checks
// of topics the relay has not used yet run all at once, so that a batch that
// is the first to use many topics waits for one check, at most
// TopicCheckTimeout, not for one per topic: its transaction is silent
// meanwhile, within the stall bound (its idle_in_transaction_session_timeout).
func (s *Sink) topicVerdicts(ctx context.Context, rows []row) map[string]topicVerdict {
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
		found[0] = s.topicSettings(ctx, topics[0])
	} else {
		var wg sync.WaitGroup
		for i, topic := range topics {
			wg.Go(func() { found[i] = s.topicSettings(ctx, topic) })
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
func (s *Sink) checkTopicSettings(rec *kgo.Record, v topicVerdict) error {
	if size := batchSize(rec); v.maxBytes > 0 && size > int(v.maxBytes) {
		return badRow("row is %d bytes as a record batch (key %d, payload %d bytes); topic %s accepts at most %d (max.message.bytes): shrink the payload or raise the topic's limit",
			size, len(rec.Key), len(rec.Value), rec.Topic, v.maxBytes)
	}
	if s.opts.Durability == DurabilityStrict && len(v.problems) > 0 {
		return badRow("topic %s is not durable (%s); strict durability refuses to produce to it", rec.Topic, strings.Join(v.problems, "; "))
	}
	return nil
}

// ErrTopicMissing marks a row whose topic the cluster does not have. That is
// the row's own problem, not an outage, even when every row of a batch has
// it: the rows spend attempts and are escalated with the reason, rather than
// waiting for ever while the relay reports Kafka down.
var ErrTopicMissing = errors.New("the topic does not exist")

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
	return fmt.Errorf("%w: topic %s: create it, or let the brokers create topics (%w)", ErrTopicMissing, topic, err)
}

// partitionUnknownError is UNKNOWN_TOPIC_OR_PARTITION for a topic the relay
// has seen exist. It is OutageError.
type partitionUnknownError struct{ error }

func (e partitionUnknownError) Unwrap() error { return e.error }
func (e partitionUnknownError) Outage() bool  { return true }
