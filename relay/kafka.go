package relay

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/kafkasink"
)

// The Kafka side lives in internal/kafkasink; these are what an embedder
// needs of it, since it cannot import an internal package.

// DefaultProduceTimeout is Config.ProduceTimeout's default.
const DefaultProduceTimeout = kafkasink.DefaultProduceTimeout

// NewKafkaClient returns a producer with the settings the relay's guarantees
// depend on (acks=all, idempotence, unlimited retries and no delivery
// timeout of the client's own, cancellable idempotent produce, the Java
// client's partitioner). Options in extra (TLS, SASL, logging, tuning) come
// first, so they cannot turn off what follows: a kgo.RecordDeliveryTimeout
// there is overridden, set Config.ProduceTimeout instead. See
// kafkasink.NewClient for why each is needed.
func NewKafkaClient(brokers []string, extra ...kgo.Opt) (*kgo.Client, error) {
	return kafkasink.NewClient(brokers, extra...)
}

// HeaderOutboxID names the header that carries the row id as decimal text.
// It is unique within one database, but after an asynchronous failover or a
// point-in-time restore the identity can issue an id again for a different
// row: consumers dedup on HeaderOutboxUUID.
const HeaderOutboxID = kafkasink.HeaderOutboxID

// HeaderOutboxUUID names the header that carries the row's uuid column
// (random, set at INSERT) in its canonical text form. It identifies the row
// across failovers and restores, so consumers drop the duplicates that
// at-least-once delivery allows by it. Rows sent before migration 00002 have
// none.
const HeaderOutboxUUID = kafkasink.HeaderOutboxUUID

// Durability says what the relay does about topics whose broker settings
// can lose acknowledged records: replication factor below 3,
// min.insync.replicas below 2, or unclean leader election enabled.
type Durability = kafkasink.Durability

const (
	// DurabilityOff checks nothing (the zero value, for tests and
	// embedders; the relay command defaults to DurabilityWarn).
	DurabilityOff = kafkasink.DurabilityOff
	// DurabilityWarn logs, counts and alerts once per topic, and produces.
	DurabilityWarn = kafkasink.DurabilityWarn
	// DurabilityStrict also refuses to produce: the topic's rows are
	// escalated with the reason.
	DurabilityStrict = kafkasink.DurabilityStrict
)

// newSink wraps client for this relay: the sink reports back to the
// relay's logs, metrics, alerts and Kafka health.
func (r *Relay) newSink(client *kgo.Client) *kafkasink.Sink {
	return kafkasink.New(client, kafkasink.Options{
		ProduceTimeout: r.cfg.ProduceTimeout,
		BatchTimeout:   r.cfg.BatchTimeout,
		Durability:     r.cfg.Durability,
		Logger:         r.logger,
		Refuse:         expiry,
		StallAfter:     r.stallAfter(),
		Stalled:        r.kafkaStalled,
		HeaderReplaced: func(topic string) { r.cfg.Metrics.reservedHeaderReplaced(topic) },
		NotDurable:     r.topicNotDurable,
		BrokerFailing:  r.kafkaFailing,
	})
}

// topicNotDurable counts and alerts a topic newly found unsafe (the sink
// has logged it).
func (r *Relay) topicNotDurable(ctx context.Context, topic, reason string) {
	r.cfg.Metrics.topicNotDurable(topic)
	r.alerter.Raise(ctx, alert.Alert{
		Kind:    alert.KindDurability,
		Topic:   topic,
		Message: fmt.Sprintf("topic %s can lose acknowledged records: %s", topic, reason),
		At:      time.Now(),
	})
}

// topicCheckTimeout bounds the checks of a batch's new topics, which its
// transaction waits for in silence (see stallBound).
const topicCheckTimeout = kafkasink.TopicCheckTimeout
