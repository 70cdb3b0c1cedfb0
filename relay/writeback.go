package relay

import (
	"time"

	"github.com/outboxrelay/relay/internal/pgstore"
)

// writeBack records the outcome for the batch's transaction
// (pgstore.BatchTx.WriteBack; its Commit sends it): sent rows get their position, retriable
// failures their error and next attempt time, and rows past saving move to
// stuck_messages. Which rows escalate is decided here (verdicts). It
// returns the escalated rows.
func (o outcome) writeBack(tx *pgstore.BatchTx, cfg Config, now *time.Time) (escalated []failure, err error) {
	if o.lost != nil {
		return nil, o.lost
	}
	if o.aborted {
		return nil, errAborted
	}
	escalate, retryLater := o.verdicts(cfg.MaxAttempts)
	w := pgstore.WriteBack{
		SentIDs: o.sentIDs, SentPartitions: o.sentPartitions, SentOffsets: o.sentOffsets,
		DeleteSent: cfg.DeleteOnSend,
		Retry:      make([]pgstore.Retry, len(retryLater)),
		Escalate:   make([]pgstore.Escalation, len(escalate)),
		Now:        now,
	}
	for i, f := range retryLater {
		w.Retry[i] = pgstore.Retry{ID: f.row.ID, Error: f.err.Error(), Delay: cfg.Retry.Next(f.row.Attempts + 1)}
	}
	for i, f := range escalate {
		w.Escalate[i] = pgstore.Escalation{ID: f.row.ID, Error: f.err.Error(), Kind: f.errorKind()}
	}
	tx.WriteBack(w)
	return escalate, nil
}
