package main

import (
	"context"
	"log/slog"

	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/alert"
)

// alerting builds the alert pipeline: the log sees every alert at once;
// with RELAY_ALERT_WEBHOOK_URL set, the webhook sees them aggregated per
// RELAY_ALERT_WINDOW. start runs the pipeline's goroutines in g until ctx
// ends; the webhook is stopped after the aggregator, so its last summaries
// are still sent.
func alerting(cfg Config, log *slog.Logger) (sink alert.Alerter, start func(ctx context.Context, g *errgroup.Group), err error) {
	logSink := alert.Log{Logger: log}
	if cfg.AlertWebhookURL == "" {
		return logSink, func(context.Context, *errgroup.Group) {}, nil
	}
	wh, err := alert.NewWebhook(alert.WebhookConfig{URL: cfg.AlertWebhookURL, Logger: log.With("component", "alert_webhook")})
	if err != nil {
		return nil, nil, usageErrorf("RELAY_ALERT_WEBHOOK_URL: %v", err)
	}
	agg := alert.NewAggregator(alert.AggregatorConfig{Window: cfg.AlertWindow}, wh)
	start = func(ctx context.Context, g *errgroup.Group) {
		whCtx, stopWebhook := context.WithCancel(context.WithoutCancel(ctx))
		g.Go(func() error { return wh.Run(whCtx) })
		g.Go(func() error { defer stopWebhook(); return agg.Run(ctx) })
	}
	return alert.Fanout{logSink, agg}, start, nil
}
