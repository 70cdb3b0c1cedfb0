// Package alert tells humans that the relay needs attention. The relay raises
// alerts through the Alerter interface; sinks decide where they go.
package alert

import (
	"context"
	"log/slog"
	"time"
)

// Kind names what an alert is about; sinks and dashboards group by it.
type Kind string

const (
	// KindEscalated: rows were moved to stuck_messages.
	KindEscalated Kind = "rows_escalated"
	// KindOutage: Kafka has been unreachable for a while.
	KindOutage Kind = "kafka_outage"
	// KindLag: the oldest pending row is older than the configured bound.
	KindLag Kind = "delivery_lag"
)

// Alert is one thing a human should know about.
type Alert struct {
	Kind    Kind
	Topic   string // empty when the alert is not about one topic
	Message string // one line a human can act on
	Count   int    // how many rows or events it covers; 0 when not countable
	At      time.Time
}

// Alerter receives alerts. Raise must not block the caller for long: the
// delivery loop calls it.
type Alerter interface {
	Raise(ctx context.Context, a Alert)
}

// Log writes every alert to a structured logger at error level.
type Log struct {
	Logger *slog.Logger
}

var _ Alerter = Log{}

// Raise logs the alert.
func (l Log) Raise(ctx context.Context, a Alert) {
	l.Logger.LogAttrs(ctx, slog.LevelError, "alert",
		slog.String("alert_kind", string(a.Kind)),
		slog.String("topic", a.Topic),
		slog.Int("count", a.Count),
		slog.String("detail", a.Message),
	)
}
