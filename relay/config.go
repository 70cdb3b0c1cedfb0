package relay

import (
	"time"

	"github.com/outboxrelay/relay/retry"
)

// Config tunes a Relay. Zero values mean the documented default.
type Config struct {
	// Schema holds the outbox tables. Default "outbox". The pool handed to
	// New must have its search_path set to it (see PoolConfig).
	Schema string
	// BatchSize is how many rows one claim takes. Default 1000.
	BatchSize int
	// PollInterval is the longest an idle relay waits before looking for
	// rows again; with Wakeup on it is only the fallback. Default 500ms.
	PollInterval time.Duration
	// Wakeup registers the relay for NOTIFY while it is idle so new rows
	// are delivered within milliseconds. Default on; see DisableWakeup.
	DisableWakeup bool
	// Retry spaces out the attempts of a row whose produce failed.
	Retry retry.Policy
	// ShutdownTimeout bounds how long Run waits for the batch in flight
	// after its context ends. Default 30s.
	ShutdownTimeout time.Duration
	// Instance names this relay in idle_relays and logs. Default: random.
	Instance string
}

func (c Config) withDefaults() Config {
	if c.Schema == "" {
		c.Schema = "outbox"
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 500 * time.Millisecond
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	return c
}
