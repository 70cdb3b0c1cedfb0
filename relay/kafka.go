package relay

import (
	"fmt"
	"math"

	"github.com/twmb/franz-go/pkg/kgo"
)

// NewKafkaClient returns a producer with the settings the relay's guarantees
// depend on. Options in extra (TLS, SASL, logging, tuning) come first, so they
// cannot turn off what follows:
//
//   - acks=all and idempotent writes: an acknowledged record is on every
//     in-sync replica, and the client's own retries never duplicate or
//     reorder a partition's records.
//   - unlimited record retries and no delivery timeout: retriable errors and
//     outages make rows wait, never fail (an outage is not a row failure).
//   - the Java client's partitioner (murmur2 on the key, sticky for rows
//     without a key), so a key lands where an in-app Java producer put it.
//
// Lingering is off by default: the relay hands Kafka a whole batch at once,
// so waiting for more records would only add latency.
func NewKafkaClient(brokers []string, extra ...kgo.Opt) (*kgo.Client, error) {
	opts := []kgo.Opt{kgo.ProducerLinger(0)}
	opts = append(opts, extra...)
	opts = append(opts,
		kgo.SeedBrokers(brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordRetries(math.MaxInt),
		kgo.RecordDeliveryTimeout(0),
		kgo.RecordPartitioner(kgo.UniformBytesPartitioner(64<<10, true, true, nil)),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	return cl, nil
}
