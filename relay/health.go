package relay

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/kafkasink"
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
	// partial holds the topics with partitions that failed their rows for
	// reasons that are not the rows' (an outage of those partitions)
	// while other records went through.
	partial map[string]*partialOutage
}

// partialOutage is an outage of some of a topic's partitions.
type partialOutage struct {
	since      time.Time
	partitions map[int32]bool
	reason     string
	alerted    bool
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
// stallAfter after that, without a single answer from Kafka. The reason is
// the client's last failure to connect or to produce, when it had one: the
// client retries those silently, and "connection refused" says more than
// "no answer".
func (r *Relay) kafkaStalled(since time.Time) {
	reason := errNoAnswer
	if cause := r.sink.LastFailure(); cause != nil {
		reason = fmt.Errorf("%w: %w", errNoAnswer, cause)
	}
	r.health.down(since, reason)
	r.maybeAlertOutage(context.Background())
}

var errNoAnswer = fmt.Errorf("no answer from Kafka to a produce")

// kafkaFailing hears from the client's hooks, at once, of the first
// connection it could not open or produce request it could not complete
// after a success (kafkasink.Options.BrokerFailing): the client would retry
// silently until the produce timeout, so without this an outage shorter
// than that would never be logged.
func (r *Relay) kafkaFailing(cause error) {
	r.logger.Warn("kafka_connection_failed", "error", cause)
}

// notePartialOutage records the partitions of out that failed for reasons
// that are not their rows' (kafkasink.Outage) while the batch got other
// records through: it logs them at once, by topic, and raises an alert
// naming the topic and partitions once they have been out for
// OutageAlertAfter. A topic that took records and failed none this way is
// well again.
func (r *Relay) notePartialOutage(ctx context.Context, out outcome, sentTopics map[string]bool) {
	type down struct {
		partitions map[int32]bool
		reason     string
	}
	now := time.Now()
	failing := map[string]*down{}
	for _, f := range out.failed {
		if f.kind != kafkasink.Outage {
			continue
		}
		d := failing[f.row.Topic]
		if d == nil {
			d = &down{partitions: map[int32]bool{}, reason: f.err.Error()}
			failing[f.row.Topic] = d
		}
		if f.partition >= 0 {
			d.partitions[f.partition] = true
		}
	}
	h := &r.health
	var alerts []alert.Alert
	h.mu.Lock()
	if h.partial == nil {
		h.partial = map[string]*partialOutage{}
	}
	for topic, d := range failing {
		p := h.partial[topic]
		if p == nil {
			p = &partialOutage{since: now, partitions: map[int32]bool{}}
			h.partial[topic] = p
			r.logger.Warn("kafka_partitions_unavailable", "topic", topic, "partitions", partitionList(d.partitions), "error", d.reason)
		}
		maps.Copy(p.partitions, d.partitions)
		p.reason = d.reason
		if !p.alerted && now.Sub(p.since) >= r.cfg.OutageAlertAfter {
			p.alerted = true
			alerts = append(alerts, alert.Alert{
				Kind:  alert.KindOutage,
				Topic: topic,
				Message: fmt.Sprintf("Kafka partitions %s of topic %s have been unavailable for %v; their rows are waiting, none is failed: %s",
					partitionList(p.partitions), topic, now.Sub(p.since).Round(time.Second), p.reason),
				At: now,
			})
		}
	}
	for topic, p := range h.partial {
		if failing[topic] == nil && sentTopics[topic] {
			delete(h.partial, topic)
			r.logger.Info("kafka_partitions_recovered", "topic", topic, "partitions", partitionList(p.partitions),
				"outage", now.Sub(p.since).Round(time.Millisecond).String())
		}
	}
	h.mu.Unlock()
	for _, a := range alerts {
		r.alerter.Raise(ctx, a)
	}
}

// partitionList formats a set of partitions as "[0 3 5]".
func partitionList(set map[int32]bool) string {
	return fmt.Sprint(slices.Sorted(maps.Keys(set)))
}

// outageReason is the reason of a batch that Kafka took nothing of: its
// first failure, and the partitions whose rows failed, by topic.
func outageReason(out outcome) error {
	byTopic := map[string]map[int32]bool{}
	for _, f := range out.failed {
		if f.kind != kafkasink.Outage {
			continue
		}
		if byTopic[f.row.Topic] == nil {
			byTopic[f.row.Topic] = map[int32]bool{}
		}
		if f.partition >= 0 {
			byTopic[f.row.Topic][f.partition] = true
		}
	}
	if len(byTopic) == 0 {
		return out.failed[0].err
	}
	var where []string
	for _, topic := range slices.Sorted(maps.Keys(byTopic)) {
		where = append(where, fmt.Sprintf("topic %s partitions %s", topic, partitionList(byTopic[topic])))
	}
	for _, f := range out.failed {
		if f.kind == kafkasink.Outage {
			return fmt.Errorf("%w (%s)", f.err, strings.Join(where, ", "))
		}
	}
	return out.failed[0].err
}

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
