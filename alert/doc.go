// Package alert tells humans that the relay needs attention: rows escalated
// to stuck_messages, a Kafka outage, delivery falling behind.
//
// The relay raises alerts through the Alerter interface from its delivery
// loop, so every Alerter here returns at once: a slow or dead alert receiver
// must never hold back the rows it is alerting about. Sinks compose:
//
//   - Log writes every alert it is given to a structured logger (always wire
//     it: the log is the record of last resort when the webhook is down).
//   - Func adapts a function, so cmd/relay can count alerts into Prometheus
//     without this package importing it.
//   - Aggregator groups alerts by kind and topic over a window so a burst of
//     37 escalations becomes one message at once and one summary per window,
//     not 37 pages.
//   - Webhook POSTs JSON with a Slack-compatible "text" field from its own
//     goroutine, with a timeout, retries and a bounded queue.
//   - Fanout sends one alert to several sinks.
//
// A typical wiring, the one cmd/relay uses, with metrics counting every alert
// and the log and the webhook both seeing the aggregated stream, so they say
// the same thing (the log's per-row lines keep the detail):
//
//	wh, err := alert.NewWebhook(alert.WebhookConfig{URL: url, Logger: logger})
//	agg := alert.NewAggregator(alert.AggregatorConfig{}, alert.Log{Logger: logger}, wh)
//	sink := alert.Fanout{agg, alert.Func(countAlert)}
//
// Aggregator.Run and Webhook.Run own the package's only goroutines; both
// block until their context ends. Stop the webhook after the aggregator's Run
// has returned, so the summaries it flushes on shutdown are still sent; the
// webhook then drains its queue for at most its DrainTimeout:
//
//	whCtx, stopWebhook := context.WithCancel(context.WithoutCancel(ctx))
//	g.Go(func() error { return wh.Run(whCtx) })
//	g.Go(func() error { defer stopWebhook(); return agg.Run(ctx) })
//
// The package imports nothing from the relay module: it is a leaf.
package alert
