package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/relay"
)

// checkTimeout bounds how long the check waits for a missing record.
const checkTimeout = 30 * time.Second

// check reads topics from the start and verifies what the phase delivered:
// every row 1..total at least once (rows numbered as the timeline's, see
// rowOf), duplicates counted, and per-key order by outbox id:
// within a partition (a key's records all land in one), the first delivery
// of each row of a key comes after the first delivery of every earlier row
// of that key. Duplicates of the rows a killed instance left to the others
// (kw, nil without a kill) are counted apart: at-least-once allows them
// after a crash, and every other duplicate is a fault.
func (e *env) check(ctx context.Context, topics []string, total int, kw *killWatch) (Check, error) {
	cl, err := e.consumerFromStart(topics, 200*time.Millisecond)
	if err != nil {
		return Check{}, fmt.Errorf("check consumer: %w", err)
	}
	defer cl.Close()
	seen := make([]bool, total+1)
	last := map[string]int64{} // topic + "\x00" + key → highest id first delivered
	var c Check
	distinct := 0
	for distinct < total {
		pctx, cancel := context.WithTimeout(ctx, checkTimeout)
		fs := cl.PollFetches(pctx)
		cancel()
		if pctx.Err() != nil && ctx.Err() == nil && fs.NumRecords() == 0 {
			c.Missing = total - distinct
			return c, nil
		}
		if err := ctx.Err(); err != nil {
			return Check{}, err
		}
		var ferr error
		fs.EachError(func(t string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) {
				ferr = errors.Join(ferr, fmt.Errorf("fetch %s/%d: %w", t, p, err))
			}
		})
		if ferr != nil {
			return Check{}, ferr
		}
		fs.EachRecord(func(rec *kgo.Record) {
			c.Records++
			row, ok := e.rowOf(rec, total+1)
			id, idOK := headerNumber(rec, relay.HeaderOutboxID)
			if !ok || !idOK {
				c.Foreign++
				return
			}
			if seen[row] {
				if kw.tookOver(row) {
					c.DuplicatesAfterKill++
				} else {
					c.Duplicates++
				}
				return
			}
			seen[row] = true
			distinct++
			if rec.Key == nil {
				return
			}
			k := rec.Topic + "\x00" + string(rec.Key)
			if prev, ok := last[k]; ok && prev > id {
				c.OrderViolations++
				return
			}
			last[k] = id
		})
	}
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
	row, ok := headerNumber(rec, headerBenchRow)
	return row, ok && row >= 1 && row < int64(n)
}

// headerNumber is the decimal value of rec's header key.
func headerNumber(rec *kgo.Record, key string) (int64, bool) {
	for _, h := range rec.Headers {
		if h.Key == key {
			v, err := strconv.ParseInt(string(h.Value), 10, 64)
			return v, err == nil
		}
	}
	return 0, false
}
