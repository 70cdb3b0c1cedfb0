package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/readback"
)

// checkTimeout bounds how long the check waits for a missing record.
const checkTimeout = 30 * time.Second

// check reads topics from the start and verifies what the phase delivered
// with readback's checker: every row 1..total at least once (rows numbered
// as the timeline's, see rowOf), duplicates counted, and per-key order by
// outbox id. Duplicates of the rows a killed instance left to the others
// (kw, nil without a kill) are counted apart: at-least-once allows them
// after a crash, and every other duplicate is a fault.
func (e *env) check(ctx context.Context, topics []string, total int, kw *killWatch) (Check, error) {
	rd, err := e.reader(topics, 200*time.Millisecond)
	if err != nil {
		return Check{}, fmt.Errorf("check consumer: %w", err)
	}
	defer rd.Close()
	chk := readback.NewChecker()
	var c Check
	for chk.Distinct() < total {
		pctx, cancel := context.WithTimeout(ctx, checkTimeout)
		recs, err := rd.Poll(pctx)
		idle := pctx.Err() != nil
		cancel()
		if err := ctx.Err(); err != nil {
			return Check{}, err
		}
		if idle && len(recs) == 0 {
			c.Missing = total - chk.Distinct()
			break
		}
		if err != nil && !idle {
			return Check{}, err
		}
		for _, rec := range recs {
			c.Records++
			row, ok := e.rowOf(rec, total+1)
			id, idErr := readback.OutboxID(rec)
			if !ok || idErr != nil {
				c.Foreign++
				continue
			}
			if first := chk.Add(id, rec.Topic, rec.Key, rec.Partition); !first && kw.tookOver(row) {
				c.DuplicatesAfterKill++
			}
		}
	}
	c.Duplicates = chk.Duplicates - c.DuplicatesAfterKill
	c.OrderViolations = chk.OrderViolations
	return c, nil
}

// rowOf is the number of rec's row, if it lies in 1..n-1: the timeline's
// and the check's index. In the bench's own outbox it is the outbox id, as
// ids start at 1 in every phase; in an external outbox, whose ids come
// from a sequence others use too, it is the row's bench-row header.
func (e *env) rowOf(rec *kgo.Record, n int) (int64, bool) {
	if !e.cfg.external() {
		return outboxID(rec, n)
	}
	row, err := readback.Number(rec, headerBenchRow)
	return row, err == nil && row >= 1 && row < int64(n)
}
