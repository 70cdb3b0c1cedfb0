package relay

import (
	"context"
	"time"

	"github.com/outboxrelay/relay/internal/kafkasink"
)

// DeliverBatch exposes one loop iteration to the external tests, with a
// fixed "now" (nil for the database clock).
func (r *Relay) DeliverBatch(ctx context.Context, now *time.Time) (int, error) {
	return r.deliverBatch(ctx, now)
}

// Prune exposes one retention pass with a fixed "now".
func (r *Relay) Prune(ctx context.Context, now *time.Time) (int64, error) {
	return r.store.PruneSent(ctx, r.cfg.SentRetention, now)
}

// ClaimAndRelease claims one batch as the loop would and rolls it back, so a
// benchmark can claim the same rows again: how many rows it locked.
func (r *Relay) ClaimAndRelease(ctx context.Context) (int, error) {
	b, err := r.claimBatch(ctx, nil)
	if err != nil || b == nil {
		return 0, err
	}
	defer b.cancel()
	n := len(b.rows)
	return n, b.tx.Rollback(ctx)
}

// TopicRecheck is how long a topic's verdict is trusted.
const TopicRecheck = kafkasink.TopicRecheck

// AgeTopicVerdict moves topic's last check d into the past, so its next use
// starts a refresh.
func (r *Relay) AgeTopicVerdict(topic string, d time.Duration) { r.sink.AgeTopicVerdict(topic, d) }

// TopicCheckedAt returns when topic's settings were last read.
func (r *Relay) TopicCheckedAt(topic string) time.Time { return r.sink.TopicCheckedAt(topic) }

// WaitTopicRefreshes waits for the background topic checks.
func (r *Relay) WaitTopicRefreshes() { r.sink.WaitRefreshes() }

// InFlightLimit is how many batches the relay now keeps in flight.
func (r *Relay) InFlightLimit() int { return r.inFlightLimit() }

// SetAfterLock makes every claim call f between locking its rows and asking
// what holds them back.
func (r *Relay) SetAfterLock(f func()) { r.afterLock = f }

// SetBeforeTopicCheck sets a function to run as each check of a topic's
// settings starts.
func (r *Relay) SetBeforeTopicCheck(f func(topic string)) { r.sink.SetBeforeTopicCheck(f) }

// SetMaxTopics bounds the topics whose settings the relay keeps.
func (r *Relay) SetMaxTopics(n int) { r.sink.SetMaxTopics(n) }

// TopicsKnown is how many topics' settings the relay keeps.
func (r *Relay) TopicsKnown() int { return r.sink.TopicsKnown() }

// SetTopicSeriesCap bounds the topics with series of their own.
func (m *Metrics) SetTopicSeriesCap(n int) { m.topicCap = n }
