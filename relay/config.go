package relay

import (
	"errors"
	"fmt"
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
	// batch keeps, as BatchSize bounds its rows: a claim keeps rows in id
	// order while the bytes of the rows it locked before each are under it
	// (a single row larger than it still goes, alone). The claim reads a
	// locked row's payload and headers with the lock only if the row is at
	// most BatchMaxBytes / BatchSize bytes, so those reads add up to
	// BatchMaxBytes at most; a larger row's are read afterwards, and only
	// if the batch keeps it. Rows locked beyond the bound are left pending,
	// unproduced. With InFlightBatches batches in flight, the relay holds
	// at most about InFlightBatches × BatchMaxBytes of rows (plus one row
	// each). Default 16 MiB.
	BatchMaxBytes int64
	// InFlightBatches is how many claimed batches may await Kafka at once:
	// the relay claims the next batch while the last one is being
	// produced. Each holds a pool connection. Default 2.
	InFlightBatches int
	// PollInterval is the longest an idle relay waits before looking for
	// rows again; with the wake-up on it is only the fallback. Default
	// 500ms.
	PollInterval time.Duration
	// ClaimLinger is Kafka's linger applied to claims: after a claim that
	// did not fill its batch, the next claim comes no sooner than this
	// long after it, so that rows accumulate into fewer, larger batches.
	// Each batch costs the database about the same work whatever its size
	// (a transaction, a lock, a mark), so at a steady trickle the linger
	// cuts the relay's Postgres CPU per row, at up to this much added
	// latency. It never delays a claim after a full batch, nor the first
	// claim after a wake-up. Default 0: claim again as soon as Kafka has
	// answered the last batch.
	ClaimLinger time.Duration
	// DisableWakeup turns off the wake-up: by default an idle relay
	// registers for NOTIFY, so new rows are delivered within milliseconds.
	DisableWakeup bool
	// Retry spaces out the attempts of a row whose produce failed.
	Retry retry.Policy
	// ProduceTimeout bounds how long a record may go unanswered by Kafka,
	// the client retrying, from the moment the relay hands it over. An
	// idempotent client never fails a record it may have written, so a
	// broker that takes a produce request and never answers it would hold
	// the batch, and every later row of its partition, for ever. When the
	// bound passes the relay cancels the record: the client drops it (and
	// moves to a new producer epoch), and its row stays pending as in an
	// outage, with no attempt spent. It replaces the client's delivery
	// timeout (kgo.RecordDeliveryTimeout), which NewKafkaClient turns off:
	// the client measures that from the record's timestamp, the row's
	// created_at, so a backlog would time out before it is sent. Default
	// DefaultProduceTimeout.
	ProduceTimeout time.Duration
	// BatchTimeout bounds how long one wave of a batch, or its rows
	// produced again alone, waits for Kafka's answers as a whole, on the
	// same terms; each record keeps its ProduceTimeout within it. Default
	// 2 × ProduceTimeout.
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
	if c.ProduceTimeout <= 0 {
		c.ProduceTimeout = DefaultProduceTimeout
	}
	if c.BatchTimeout <= 0 {
		c.BatchTimeout = 2 * c.ProduceTimeout
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	return c
}

// FieldError is a Config setting out of range.
type FieldError struct {
	Field   string // the Config field: "BatchSize", "Retry.Max"
	Value   any
	Problem string // "must be between 1 and 100000"
	// Other is the field Problem compares Field with, if any
	// ("Retry.Base"); Problem names it.
	Other string
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %v: %s", e.Field, e.Value, e.Problem) }

// Validate reports the settings out of range, each as a *FieldError, joined
// with errors.Join; nil if there are none. A zero setting is valid: it means
// the default. New does not validate (a negative setting falls back to its
// default there): call Validate before it.
func (c Config) Validate() error { return c.validate(true) }

// ValidateGiven is Validate for a Config whose every setting was given, as a
// program that reads them from flags or the environment has: a zero setting
// is checked like any other value (a BatchSize of 0 is out of range, not the
// default). SentRetention may be 0, as with DeleteOnSend.
func (c Config) ValidateGiven() error { return c.validate(false) }

func (c Config) validate(zeroIsDefault bool) error {
	var errs []error
	bad := func(field string, value any, problem string) {
		errs = append(errs, &FieldError{Field: field, Value: value, Problem: problem})
	}
	// inRange checks v against lo and hi; hi 0: no upper bound.
	inRange := func(field string, v, lo, hi int64) {
		switch {
		case v == 0 && zeroIsDefault:
		case hi == 0 && v < lo:
			bad(field, v, fmt.Sprintf("must be at least %d", lo))
		case hi != 0 && (v < lo || v > hi):
			bad(field, v, fmt.Sprintf("must be between %d and %d", lo, hi))
		}
	}
	positive := func(field string, d time.Duration) {
		if (d != 0 || !zeroIsDefault) && d <= 0 {
			bad(field, d, "must be positive")
		}
	}
	inRange("BatchSize", int64(c.BatchSize), 1, 100000)
	inRange("BatchMaxBytes", c.BatchMaxBytes, 1024, 0)
	inRange("InFlightBatches", int64(c.InFlightBatches), 1, 64)
	positive("PollInterval", c.PollInterval)
	if c.ClaimLinger < 0 || c.ClaimLinger > time.Second {
		bad("ClaimLinger", c.ClaimLinger, "must be between 0 and 1s")
	}
	positive("Retry.Base", c.Retry.Base)
	positive("Retry.Max", c.Retry.Max)
	if c.Retry.Base > 0 && c.Retry.Max > 0 && c.Retry.Max < c.Retry.Base {
		errs = append(errs, &FieldError{Field: "Retry.Max", Value: c.Retry.Max, Other: "Retry.Base",
			Problem: fmt.Sprintf("must not be less than Retry.Base (%v)", c.Retry.Base)})
	}
	positive("ProduceTimeout", c.ProduceTimeout)
	positive("BatchTimeout", c.BatchTimeout)
	positive("ShutdownTimeout", c.ShutdownTimeout)
	inRange("MaxAttempts", int64(c.MaxAttempts), 1, 0)
	positive("OutageAlertAfter", c.OutageAlertAfter)
	positive("LagAlertAfter", c.LagAlertAfter)
	if c.SentRetention < 0 {
		bad("SentRetention", c.SentRetention, "must not be negative")
	}
	if c.Durability < DurabilityOff || c.Durability > DurabilityStrict {
		bad("Durability", int(c.Durability), "must be DurabilityOff, DurabilityWarn or DurabilityStrict")
	}
	return errors.Join(errs...)
}
