package relay

import (
	"context"

	"github.com/outboxrelay/relay/internal/kafkasink"
)

// produceWaves produces a batch in waves: wave n holds the n-th row of each
// key's chain (and, in the first wave, the rows without a key), and starts
// only when Kafka has answered every row of wave n-1. A row goes out only
// when the row before it in its key's chain was acknowledged, so a key's
// rows never race each other inside the client, whose retries can reorder
// them after a failure (franz-go issues #515, #852). When a row fails, the
// later rows of its key stay untouched and pending for a later batch. A wave
// that ends in an outage or an abort ends the batch. The rows of a wave
// that Kafka rejected with their record batch are produced again alone
// (retryAlone) before the next wave, so the later rows of their keys wait
// for them. keepAlive runs before each wave after the first and before a
// retry alone (see pgstore.BatchTx.KeepAlive); when it fails, the batch ends there,
// lost.
func (r *Relay) produceWaves(ctx context.Context, rows []row, keepAlive func(context.Context) error) outcome {
	waves := 1
	for _, x := range rows {
		waves = max(waves, x.Wave)
	}
	var total outcome
	blocked := map[string]bool{} // topic and key of rows that were not acknowledged
	wave := make([]row, 0, len(rows))
	for n := 1; n <= waves; n++ {
		wave = wave[:0]
		for _, x := range rows {
			if waves == 1 || x.Wave == n && (x.Key == nil || !blocked[x.ChainKey()]) {
				wave = append(wave, x)
			}
		}
		if len(wave) == 0 {
			break
		}
		if n > 1 {
			if err := keepAlive(ctx); err != nil {
				total.lost = err
				break
			}
		}
		out := r.produce(ctx, wave)
		if len(out.rejected) > 0 && !out.aborted {
			if err := keepAlive(ctx); err != nil {
				total.lost = err
				break
			}
			r.retryAlone(ctx, &out)
		}
		total.sentIDs = append(total.sentIDs, out.sentIDs...)
		total.sentPartitions = append(total.sentPartitions, out.sentPartitions...)
		total.sentOffsets = append(total.sentOffsets, out.sentOffsets...)
		if n > 1 && out.outage() {
			// Kafka went away between waves: as in any outage, the rows
			// that did not go through spend no attempt.
			for _, f := range out.failed {
				if f.kind == kafkasink.RowFatal {
					total.failed = append(total.failed, f)
				}
			}
			break
		}
		total.failed = append(total.failed, out.failed...)
		if out.aborted || out.outage() {
			total.aborted = out.aborted
			break
		}
		for _, f := range out.failed {
			if f.row.Key != nil {
				blocked[f.row.ChainKey()] = true
			}
		}
	}
	return total
}
