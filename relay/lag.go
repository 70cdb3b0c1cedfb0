package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/outboxrelay/relay/alert"
)

// backlogQuery reads the age of the oldest pending row (lowest id first;
// a delayed row's age counts from its deliver_after),
// the number of pending rows, of stuck rows, and of pending rows behind a
// stuck row of their key. The first two go through the pending index: cheap
// however much sent history is kept; the last starts from the stuck keys, so
// it costs nothing while stuck_messages is empty.
const backlogQuery = `
SELECT COALESCE((SELECT GREATEST(now() - GREATEST(created_at, deliver_after), interval '0')
                  FROM messages WHERE status = 'pending' ORDER BY id LIMIT 1), interval '0'),
       (SELECT count(*) FROM messages WHERE status = 'pending'),
       (SELECT count(*) FROM stuck_messages),
       (SELECT COALESCE(sum(c.n), 0)::bigint
        FROM (SELECT topic, key, min(id) AS id FROM stuck_messages
              WHERE key IS NOT NULL GROUP BY topic, key) s,
        LATERAL (SELECT count(*) AS n FROM messages m
                 WHERE m.status = 'pending' AND m.key IS NOT NULL
                   AND m.topic = s.topic AND m.key = s.key AND m.id > s.id) c)`

// backlog is what backlogQuery reads.
type backlog struct {
	oldest  time.Duration
	pending int64
	stuck   int64
	behind  int64 // pending rows with a stuck row of their key before them
}

// watchLag updates the backlog gauges and raises a lag alert when the oldest pending row is older than
// LagAlertAfter, once per episode: it raises again only after the lag has
// gone back under the bound.
func (r *Relay) watchLag(ctx context.Context) {
	every := min(max(r.cfg.LagAlertAfter/4, 10*time.Millisecond), 15*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	alerted := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b, err := r.backlog(ctx)
		if err != nil {
			if ctx.Err() == nil {
				r.logger.Warn("lag_check_failed", "error", err)
			}
			continue
		}
		r.cfg.Metrics.setBacklog(b)
		age := b.oldest
		switch {
		case age < r.cfg.LagAlertAfter:
			alerted = false
		case !alerted:
			alerted = true
			r.alerter.Raise(ctx, alert.Alert{
				Kind:    alert.KindLag,
				Message: fmt.Sprintf("the oldest pending row is %v old (bound %v)", age.Round(time.Second), r.cfg.LagAlertAfter),
				At:      time.Now(),
			})
		}
	}
}

// backlog reads the oldest pending row's age and the pending and stuck counts.
func (r *Relay) backlog(ctx context.Context) (backlog, error) {
	var b backlog
	if err := r.pool.QueryRow(ctx, backlogQuery).Scan(&b.oldest, &b.pending, &b.stuck, &b.behind); err != nil {
		return b, fmt.Errorf("backlog: %w", err)
	}
	return b, nil
}
