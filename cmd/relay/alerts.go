package main

import (
	"context"
	"log/slog"

	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/alert"
)

// alerting builds the alert pipeline: alerts are grouped by kind and topic
// per RELAY_ALERT_WINDOW (the first of a quiet group at once, then one
// summary per window) and the groups go to the log and, with
// RELAY_ALERT_WEBHOOK_URL set, to the webhook, so both say the same thing.
// The row-level record stays in the log's row_escalated lines; metrics count
// every alert, ungrouped (cmd_run wires them beside this sink). start runs
// the pipeline's goroutines in g until ctx ends; the webhook is stopped after
// the aggregator, so its last summaries are still sent.
func alerting(cfg Config, log *slog.Logger) (sink alert.Alerter, start func(ctx context.Context, g *errgroup.Group), err error) {
	sinks := []alert.Alerter{alert.Log{Logger: log}}
	var wh *alert.Webhook
	if cfg.AlertWebhookURL != "" {
		wh, err = alert.NewWebhook(alert.WebhookConfig{URL: cfg.AlertWebhookURL, Logger: log.With("component", "alert_webhook")})
		if err != nil {
			return nil, nil, usageErrorf("RELAY_ALERT_WEBHOOK_URL: %v", err)
		}
		sinks = append(sinks, wh)
	}
	agg := alert.NewAggregator(alert.AggregatorConfig{Window: cfg.AlertWindow}, sinks...)
	start = func(ctx context.Context, g *errgroup.Group) {
		if wh == nil {
			g.Go(func() error { return agg.Run(ctx) })
			return
		}
		whCtx, stopWebhook := context.WithCancel(context.WithoutCancel(ctx))
		g.Go(func() error { return wh.Run(whCtx) })
		g.Go(func() error { defer stopWebhook(); return agg.Run(ctx) })
	}
	return agg, start, nil
}
