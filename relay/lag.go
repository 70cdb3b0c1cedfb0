package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/relay/alert"
)

// oldestPendingQuery reads the age of the oldest pending row through the
// pending index (lowest id first): cheap however much history is kept.
const oldestPendingQuery = `
SELECT now() - created_at FROM messages WHERE status = 'pending' ORDER BY id LIMIT 1`

// watchLag raises a lag alert when the oldest pending row is older than
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
		age, err := r.oldestPendingAge(ctx)
		if err != nil {
			if ctx.Err() == nil {
				r.logger.Warn("lag_check_failed", "error", err)
			}
			continue
		}
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

// oldestPendingAge is how long the oldest pending row has waited; 0 when
// nothing is pending.
func (r *Relay) oldestPendingAge(ctx context.Context) (time.Duration, error) {
	var age time.Duration
	err := r.pool.QueryRow(ctx, oldestPendingQuery).Scan(&age)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("oldest pending: %w", err)
	}
	return age, nil
}
