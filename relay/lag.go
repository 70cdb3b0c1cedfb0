package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/wait"
)

// watchLag updates the backlog gauges and raises a lag alert when the oldest pending row is older than
// LagAlertAfter, once per episode: it raises again only after the lag has
// gone back under the bound.
func (r *Relay) watchLag(ctx context.Context) {
	every := min(max(r.cfg.LagAlertAfter/4, 10*time.Millisecond), 15*time.Second)
	alerted := false
	wait.Every(ctx, every, func(ctx context.Context) {
		b, err := r.store.Backlog(ctx)
		if err != nil {
			if ctx.Err() == nil {
				r.logger.Warn("lag_check_failed", "error", err)
			}
			return
		}
		r.cfg.Metrics.setBacklog(b)
		age := b.Oldest
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
	})
}
