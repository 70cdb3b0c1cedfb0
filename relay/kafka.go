package relay

import (
	"fmt"
	"math"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// DefaultProduceTimeout bounds how long the client keeps retrying a record
// before it reports the failure (kgo.RecordDeliveryTimeout).
const DefaultProduceTimeout = 30 * time.Second

// NewKafkaClient returns a producer with the settings the relay's guarantees
// depend on. Options in extra (TLS, SASL, logging, tuning) come first, so they
// cannot turn off what follows:
//
//   - acks=all and idempotent writes: an acknowledged record is on every
//     in-sync replica, and the client's own retries never duplicate or
//     reorder a partition's records.
//   - unlimited record retries: the client retries retriable errors itself
//     until the delivery timeout (default DefaultProduceTimeout, set
//     kgo.RecordDeliveryTimeout in extra to change it). A record it has sent
//     but not heard back about is never failed, so an outage makes a batch
//     wait; a batch that fails as a whole spends no row's attempts.
//   - the Java client's partitioner (murmur2 on the key, sticky for rows
//     without a key), so a key lands where an in-app Java producer put it.
//
// Lingering is off by default: the relay hands Kafka a whole batch at once,
// so waiting for more records would only add latency.
func NewKafkaClient(brokers []string, extra ...kgo.Opt) (*kgo.Client, error) {
	opts := []kgo.Opt{kgo.ProducerLinger(0), kgo.RecordDeliveryTimeout(DefaultProduceTimeout)}
	opts = append(opts, extra...)
	opts = append(opts,
		kgo.SeedBrokers(brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordRetries(math.MaxInt),
		kgo.RecordPartitioner(kgo.UniformBytesPartitioner(64<<10, true, true, nil)),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	return cl, nil
}
