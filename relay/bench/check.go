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
// every id 1..total at least once, duplicates counted, and per-key order:
// within a partition (a key's records all land in one), the first delivery
// of each row of a key comes after the first delivery of every earlier row
// of that key. Duplicates of the rows a killed instance left to the others
// (kw, nil without a kill) are counted apart: at-least-once allows them
// after a crash, and every other duplicate is a fault.
func (e *env) check(ctx context.Context, topics []string, total int, kw *killWatch) (Check, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(e.cfg.Brokers...),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(200*time.Millisecond),
	)
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
			var id int64 = -1
			for _, h := range rec.Headers {
				if h.Key == relay.HeaderOutboxID {
					id, _ = strconv.ParseInt(string(h.Value), 10, 64)
				}
			}
			if id < 1 || id > int64(total) {
				c.Foreign++
				return
			}
			if seen[id] {
				if kw.tookOver(id) {
					c.DuplicatesAfterKill++
				} else {
					c.Duplicates++
				}
				return
			}
			seen[id] = true
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
