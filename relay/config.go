package relay

import (
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/retry"
)

// Config tunes a Relay. Zero values mean the documented default.
type Config struct {
	// Schema holds the outbox tables. Default "outbox". The pool handed to
	// New must have its search_path set to it (see PoolConfig).
	Schema string
	// BatchSize is how many rows one claim takes. Default 1000.
	BatchSize int
	// BatchMaxBytes bounds the bytes of payload, key and headers one
	// batch keeps, as BatchSize bounds its rows: a claim takes rows in id
	// order while the bytes before each are under it (a single row larger
	// than it still goes, alone). Of the rows it locked beyond the bound,
	// only those under BatchMaxBytes / BatchSize are read at all, and
	// dropped at once. With InFlightBatches batches in
	// flight, the relay holds at most about InFlightBatches × BatchMaxBytes
	// of rows (plus one row each). Default 16 MiB.
	BatchMaxBytes int64
	// InFlightBatches is how many claimed batches may await Kafka at once:
	// the relay claims the next batch while the last one is being
	// produced. Each holds a pool connection. Default 2.
	InFlightBatches int
	// PollInterval is the longest an idle relay waits before looking for
	// rows again; with Wakeup on it is only the fallback. Default 500ms.
	PollInterval time.Duration
	// Wakeup registers the relay for NOTIFY while it is idle so new rows
	// are delivered within milliseconds. Default on; see DisableWakeup.
	DisableWakeup bool
	// Retry spaces out the attempts of a row whose produce failed.
	Retry retry.Policy
	// BatchTimeout bounds how long a batch waits for Kafka's answers. An
	// idempotent client never fails a record it may have written, so a
	// broker that takes a produce request and never answers it would hold
	// the batch, and every later row of its partition, for ever. When the
	// bound passes the relay cancels the batch's records: the client drops
	// them (and moves to a new producer epoch), and the unanswered rows
	// stay pending as in an outage, with no attempt spent. It should be a
	// small multiple of the client's delivery timeout
	// (kgo.RecordDeliveryTimeout), so a slow but live broker is not cut
	// off. Default 2 × DefaultProduceTimeout.
	BatchTimeout time.Duration
	// ShutdownTimeout bounds how long Run waits for the batch in flight
	// after its context ends. Default 30s.
	ShutdownTimeout time.Duration
	// Instance names this relay in logs. Default: random.
	Instance string
	// MaxAttempts is how many times a row may fail with a retriable error
	// before it is escalated to stuck_messages. Default 10.
	MaxAttempts int
	// DisableStuckBlocksKey turns off "stuck blocks key": by default a
	// stuck row holds back the later rows of its topic and key (strict
	// order) until an operator requeues or discards it; with this set they
	// proceed while it waits.
	DisableStuckBlocksKey bool
	// OutageAlertAfter is how long Kafka must be unreachable before the
	// relay raises an outage alert. Default 1 minute.
	OutageAlertAfter time.Duration
	// LagAlertAfter raises a lag alert when the oldest pending row is older
	// than this. Default 5 minutes.
	LagAlertAfter time.Duration
	// SentRetention is how long sent rows are kept (for audit and
	// verification) before the relay deletes them. Default 24h.
	SentRetention time.Duration
	// DeleteOnSend deletes rows as soon as Kafka acknowledged them instead
	// of marking them sent: less write amplification, no history.
	DeleteOnSend bool
	// Durability checks each topic's replication settings on first use:
	// off (default), warn, or strict (escalate rows of unsafe topics).
	Durability Durability
	// Metrics records counters and histograms for Prometheus. Nil: none.
	Metrics *Metrics
	// Alerter receives escalation, outage and lag alerts. Default: log them.
	Alerter alert.Alerter
	// TracerProvider traces each batch (tracing.go). Nil: no tracing.
	TracerProvider trace.TracerProvider
}

// DefaultBatchMaxBytes is Config.BatchMaxBytes's default.
const DefaultBatchMaxBytes = 16 << 20

func (c Config) withDefaults() Config {
	if c.Schema == "" {
		c.Schema = "outbox"
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.BatchMaxBytes <= 0 {
		c.BatchMaxBytes = DefaultBatchMaxBytes
	}
	if c.InFlightBatches <= 0 {
		c.InFlightBatches = 2
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 500 * time.Millisecond
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 10
	}
	if c.OutageAlertAfter <= 0 {
		c.OutageAlertAfter = time.Minute
	}
	if c.SentRetention <= 0 {
		c.SentRetention = 24 * time.Hour
	}
	if c.LagAlertAfter <= 0 {
		c.LagAlertAfter = 5 * time.Minute
	}
	if c.BatchTimeout <= 0 {
		c.BatchTimeout = 2 * DefaultProduceTimeout
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	return c
}
