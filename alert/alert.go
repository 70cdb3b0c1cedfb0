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
	// KindDurability: a topic's broker settings can lose acknowledged
	// records (replication factor, min.insync.replicas, unclean election).
	KindDurability Kind = "topic_not_durable"
	// KindVerifyFailed: the periodic delivery audit found sent rows whose
	// records Kafka no longer holds (missing) or holds differently
	// (mismatched): loss after the acknowledgement.
	KindVerifyFailed Kind = "verify_failed"
	// KindOutboxUnavailable: one of several outboxes of a process cannot
	// start (its schema missing or not migrated, its role lacking
	// grants); the others keep delivering and it is retried.
	KindOutboxUnavailable Kind = "outbox_unavailable"
)

// Alert is one thing a human should know about.
type Alert struct {
	Kind Kind
	// Outbox is the schema of the outbox the alert is about, so a process
	// that serves several names the one at fault; empty when unknown.
	Outbox  string
	Topic   string // empty when the alert is not about one topic
	Message string // one line a human can act on
	// Count is how many rows it covers (rows escalated); 0 when it is one
	// event rather than a number of rows. Aggregator adds up the Counts of
	// escalations; for other kinds it counts alerts.
	Count int
	At    time.Time // when it happened; sinks fill in their clock when zero
}

// Alerter receives alerts. Raise must not block the caller for long: the
// delivery loop calls it, and a receiver that hangs must not stop delivery.
// Raise reports no error: an alert that cannot be delivered is the sink's to
// log and count, the caller could do nothing better with it.
type Alerter interface {
	Raise(ctx context.Context, a Alert)
}

// Fanout sends every alert to each of its sinks in order, on the caller's
// goroutine. Each sink must return promptly on its own.
type Fanout []Alerter

var _ Alerter = Fanout(nil)

// Raise hands the alert to every sink.
func (f Fanout) Raise(ctx context.Context, a Alert) {
	for _, s := range f {
		s.Raise(ctx, a)
	}
}

// Func adapts a function to an Alerter, in the manner of http.HandlerFunc.
// It exists so that cmd/relay can count alerts by kind into Prometheus
// without this package importing a metrics library. The function runs on the
// caller's goroutine and must not block.
type Func func(ctx context.Context, a Alert)

var _ Alerter = Func(nil)

// Raise calls f.
func (f Func) Raise(ctx context.Context, a Alert) { f(ctx, a) }

// Log writes every alert to a structured logger at error level.
type Log struct {
	Logger *slog.Logger
}

var _ Alerter = Log{}

// Raise logs the alert. Kinds that count nothing (an outage, a lag) log no
// count, rather than a misleading 0. An alert about an outbox names it
// (outbox).
func (l Log) Raise(ctx context.Context, a Alert) {
	attrs := []slog.Attr{slog.String("alert_kind", string(a.Kind))}
	if a.Outbox != "" {
		attrs = append(attrs, slog.String("outbox", a.Outbox))
	}
	attrs = append(attrs, slog.String("topic", a.Topic))
	if a.Count > 0 {
		attrs = append(attrs, slog.Int("count", a.Count))
	}
	attrs = append(attrs, slog.String("detail", a.Message))
	l.Logger.LogAttrs(ctx, slog.LevelError, "alert", attrs...)
}
