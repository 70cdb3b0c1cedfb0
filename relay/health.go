package relay

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/outboxrelay/relay/alert"
)

// kafkaHealth remembers since when Kafka has been unavailable, for readiness
// and for the outage alert. The delivery loop writes it; HTTP handlers read it.
type kafkaHealth struct {
	mu        sync.Mutex
	downSince time.Time // zero while Kafka is taking records
	reason    string
	alerted   bool // the outage alert for this outage has been raised
	metrics   *Metrics
	// upAt is when the last outage ended; flapWindow how soon after it a
	// new one counts as the same (OutageAlertAfter).
	upAt       time.Time
	flapWindow time.Duration
}

// down records that Kafka took nothing at time at. The first call of an
// outage fixes its start.
func (h *kafkaHealth) down(at time.Time, reason error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.downSince.IsZero() {
		h.downSince = at
		// An outage that comes back within a window of the last one's
		// end is the same flapping outage: it has had its alert.
		if at.Sub(h.upAt) > h.flapWindow {
			h.alerted = false
		}
		h.metrics.setKafkaDown(true)
	}
	h.reason = reason.Error()
}

// up records that Kafka took a record and returns how long the outage that
// it ends lasted (0 if there was none).
func (h *kafkaHealth) up() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.downSince.IsZero() {
		return 0
	}
	d := time.Since(h.downSince)
	h.downSince = time.Time{}
	h.upAt = time.Now()
	h.metrics.setKafkaDown(false)
	return d
}

// KafkaHealthy returns nil unless the relay currently sees Kafka as
// unavailable: a batch that Kafka took nothing of, or one that has waited
// without any answer for longer than min(OutageAlertAfter, 10s).
func (r *Relay) KafkaHealthy() error {
	r.health.mu.Lock()
	defer r.health.mu.Unlock()
	if r.health.downSince.IsZero() {
		return nil
	}
	return fmt.Errorf("kafka unavailable for %v: %s", time.Since(r.health.downSince).Round(time.Second), r.health.reason)
}

// stallAfter is how long a batch may wait without a single answer before
// the relay counts Kafka as unavailable.
func (r *Relay) stallAfter() time.Duration {
	return min(r.cfg.OutageAlertAfter, 10*time.Second)
}

// kafkaStalled is called while a batch has waited stallAfter, and every
// stallAfter after that, without a single answer from Kafka.
func (r *Relay) kafkaStalled(since time.Time) {
	r.health.down(since, errNoAnswer)
	r.maybeAlertOutage(context.Background())
}

var errNoAnswer = fmt.Errorf("no answer from Kafka to a produce")

// maybeAlertOutage raises the outage alert once per outage, when it has
// lasted OutageAlertAfter.
func (r *Relay) maybeAlertOutage(ctx context.Context) {
	r.health.mu.Lock()
	since, reason := r.health.downSince, r.health.reason
	due := !since.IsZero() && !r.health.alerted && time.Since(since) >= r.cfg.OutageAlertAfter
	if due {
		r.health.alerted = true
	}
	r.health.mu.Unlock()
	if !due {
		return
	}
	r.alerter.Raise(ctx, alert.Alert{
		Kind:    alert.KindOutage,
		Message: fmt.Sprintf("Kafka has been unavailable for %v; rows are waiting, none is failed: %s", time.Since(since).Round(time.Second), reason),
		At:      time.Now(),
	})
}
