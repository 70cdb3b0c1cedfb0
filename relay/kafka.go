package relay

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"
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
//     kgo.RecordDeliveryTimeout in extra to change it). A batch that fails
//     as a whole spends no row's attempts.
//   - idempotent produce cancellation: by default an idempotent client
//     never fails a record it has written but not heard back about, so a
//     broker that never answers holds the record, and its partition, for
//     ever. With kgo.AllowIdempotentProduceCancellation the delivery
//     timeout and the record's context can fail it; the client then moves
//     to a new producer epoch. The relay relies on this to give up on a
//     batch (Config.BatchTimeout; see Relay.giveUpAfter for why per-key
//     order still holds). The cost is a possible duplicate of a record
//     given up on, which at-least-once delivery allows.
//   - the Java client's partitioner (murmur2 on the key, sticky for rows
//     without a key), so a key lands where an in-app Java producer put it.
//
// Lingering is off by default: the relay hands Kafka a whole batch at once,
// so waiting for more records would only add latency.
func NewKafkaClient(brokers []string, extra ...kgo.Opt) (*kgo.Client, error) {
	limits := &topicLimits{}
	opts := []kgo.Opt{kgo.ProducerLinger(0), kgo.RecordDeliveryTimeout(DefaultProduceTimeout)}
	opts = append(opts, extra...)
	opts = append(opts,
		kgo.ProducerBatchMaxBytesFn(limits.batchMax),
		kgo.SeedBrokers(brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordRetries(math.MaxInt),
		kgo.AllowIdempotentProduceCancellation(),
		kgo.RecordPartitioner(kgo.UniformBytesPartitioner(64<<10, true, true, nil)),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	clientLimits.Store(cl, limits)
	return cl, nil
}

// defaultBatchMax is franz-go's own batch limit, used for topics whose
// max.message.bytes the relay has not read.
const defaultBatchMax = 1_000_012

// topicLimits holds the max.message.bytes the relay read for each topic.
// The client asks it for a topic's batch limit when it first meets one of
// the topic's partitions, which is after the relay has read the topic's
// settings: a batch then never exceeds what the broker accepts, so one large
// row cannot make the broker reject its partition neighbours
// (MESSAGE_TOO_LARGE fails the whole batch).
type topicLimits struct{ m sync.Map } // topic → int32

func (l *topicLimits) set(topic string, maxBytes int32) {
	if l != nil {
		l.m.Store(topic, maxBytes)
	}
}

func (l *topicLimits) batchMax(topic string) int32 {
	if v, ok := l.m.Load(topic); ok {
		return min(max(v.(int32), 512), 1<<30)
	}
	return defaultBatchMax
}

// clientLimits finds the limits of a client made by NewKafkaClient.
var clientLimits sync.Map // *kgo.Client → *topicLimits

// limitsOf returns client's topic limits, or nil for a client that
// NewKafkaClient did not make.
func limitsOf(client *kgo.Client) *topicLimits {
	if v, ok := clientLimits.Load(client); ok {
		return v.(*topicLimits)
	}
	return nil
}

// batchSize is the encoded size of a record batch holding rec alone (v2
// format, uncompressed), the size the broker compares with the topic's
// max.message.bytes.
func batchSize(rec *kgo.Record) int {
	const batchHeader = 61
	body := 1 + 1 + 1 // attributes, timestamp delta 0, offset delta 0
	body += bytesSize(rec.Key) + bytesSize(rec.Value)
	body += varintSize(int64(len(rec.Headers)))
	for _, h := range rec.Headers {
		body += varintSize(int64(len(h.Key))) + len(h.Key) + bytesSize(h.Value)
	}
	return batchHeader + varintSize(int64(body)) + body
}

// bytesSize is the size of a length-prefixed byte field; nil is length -1.
func bytesSize(b []byte) int {
	if b == nil {
		return varintSize(-1)
	}
	return varintSize(int64(len(b))) + len(b)
}

func varintSize(v int64) int {
	return binary.PutVarint(make([]byte, binary.MaxVarintLen64), v)
}
