package relay

import (
	"context"
	"errors"

	"github.com/outboxrelay/relay/internal/kafkasink"
	"github.com/outboxrelay/relay/internal/pgstore"
)

// row is one claimed outbox row (pgstore.Row).
type row = pgstore.Row

// outcome is what happened to each row of a batch.
type outcome struct {
	sentIDs        []int64
	sentPartitions []int32
	sentOffsets    []int64
	failed         []failure
	// rejected are rows Kafka refused with their record batch (see
	// kafkasink.RejectsBatch): not yet blamed, they are produced again
	// alone (retryAlone) before the outcome is recorded.
	rejected []kafkasink.Failure
	aborted  bool  // the batch ended before Kafka answered every row
	lost     error // the batch's transaction ended before the batch did
}

type failure struct {
	row       row
	err       error
	kind      kafkasink.Kind
	partition int32 // where the client put the record; -1 if nowhere
}

// produce hands a wave's rows to Kafka (kafkasink.Sink.Produce) and waits
// for all of its answers. Rows of one key never share a wave (see
// produceWaves), so a failure cannot let a later row of the same key
// overtake an earlier one. If ctx ends first (shutdown timeout) the outcome
// is marked aborted and the caller rolls the batch back.
func (r *Relay) produce(ctx context.Context, rows []row) outcome {
	res := r.sink.Produce(ctx, rows)
	out := outcome{sentIDs: res.SentIDs, sentPartitions: res.SentPartitions, sentOffsets: res.SentOffsets,
		rejected: res.Rejected, aborted: res.Aborted}
	out.addFailed(res.Failed)
	return out
}

// retryAlone produces each row of out.rejected again in a record batch of
// its own (kafkasink.Sink.RetryAlone), and adds what happened to out. A row
// Kafka rejects even alone is at fault and fails row-fatal; the others were
// rejected for their neighbours and are delivered.
//
// It runs between waves (see produceWaves), so the later rows of each
// row's key are still waiting for it: per-key order holds. Rows it has no
// time for are left as in an outage, with no attempt spent.
func (r *Relay) retryAlone(ctx context.Context, out *outcome) {
	rejected := out.rejected
	out.rejected = nil
	if len(rejected) == 0 {
		return
	}
	res := r.sink.RetryAlone(ctx, rejected)
	out.sentIDs = append(out.sentIDs, res.SentIDs...)
	out.sentPartitions = append(out.sentPartitions, res.SentPartitions...)
	out.sentOffsets = append(out.sentOffsets, res.SentOffsets...)
	out.addFailed(res.Failed)
	out.aborted = out.aborted || res.Aborted
}

// addFailed adds the sink's failures to o.
func (o *outcome) addFailed(failed []kafkasink.Failure) {
	for _, f := range failed {
		o.failed = append(o.failed, failure{f.Row, f.Err, f.Kind, f.Partition})
	}
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
		if f.kind != kafkasink.RowFatal && !errors.Is(f.err, kafkasink.ErrTopicMissing) {
			transient = true
		}
	}
	return transient
}

// verdicts splits the failures into rows to escalate now and rows to retry.
// During an outage only row-fatal failures count; otherwise outage-kind
// failures (a connection dropped) still spend no attempt.
func (o outcome) verdicts(maxAttempts int) (escalate, retryLater []failure) {
	outage := o.outage()
	for _, f := range o.failed {
		switch {
		case f.kind == kafkasink.RowFatal:
			escalate = append(escalate, f)
		case outage || f.kind == kafkasink.Outage:
			// not the row's fault: it stays as it was
		case f.row.Attempts+1 >= maxAttempts:
			escalate = append(escalate, f)
		default:
			retryLater = append(retryLater, f)
		}
	}
	return escalate, retryLater
}
