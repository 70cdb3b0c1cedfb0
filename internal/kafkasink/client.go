package kafkasink

import (
	"fmt"
	"math"
	"net"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// DefaultProduceTimeout bounds how long a produce may go unanswered, the
// client retrying, before the sink gives up on its records (see
// Options.ProduceTimeout).
const DefaultProduceTimeout = 30 * time.Second

// NewClient returns a producer with the settings the relay's guarantees
// depend on. Options in extra (TLS, SASL, logging, tuning) come first, so they
// cannot turn off what follows:
//
//   - acks=all and idempotent writes: an acknowledged record is on every
//     in-sync replica, and the client's own retries never duplicate or
//     reorder a partition's records.
//   - unlimited record retries and no delivery timeout: the client retries
//     retriable errors itself until the record's context ends, which the
//     sink sets (Options.ProduceTimeout, Options.BatchTimeout). A batch
//     that fails as a whole spends no row's attempts. The client would
//     measure kgo.RecordDeliveryTimeout from Record.Timestamp, which is
//     the row's created_at (recordTime): a backlog's records would time
//     out before they are sent, so a kgo.RecordDeliveryTimeout in extra is
//     overridden.
//   - idempotent produce cancellation: by default an idempotent client
//     never fails a record it has written but not heard back about, so a
//     broker that never answers holds the record, and its partition, for
//     ever. With kgo.AllowIdempotentProduceCancellation the record's
//     context can fail it; the client then moves to a new producer epoch.
//     The relay relies on this to give up on a produce (see
//     Sink.giveUpAfter for why per-key order still holds). The cost is a
//     possible duplicate of a record given up on, which at-least-once
//     delivery allows.
//   - the Java client's partitioner (murmur2 on the key, sticky for rows
//     without a key), so a key lands where an in-app Java producer put it;
//     a row that sets its partition column goes there instead
//     (rowPartitioner).
//
// Lingering is off by default: the relay hands Kafka a whole batch at once,
// so waiting for more records would only add latency.
func NewClient(brokers []string, extra ...kgo.Opt) (*kgo.Client, error) {
	st := &clientState{limits: &topicLimits{}, watch: &brokerWatch{}}
	opts := []kgo.Opt{kgo.ProducerLinger(0)}
	opts = append(opts, extra...)
	opts = append(opts,
		kgo.RecordDeliveryTimeout(0),
		kgo.WithHooks(st.watch),
		kgo.ProducerBatchMaxBytesFn(st.limits.batchMax),
		kgo.SeedBrokers(brokers...),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordRetries(math.MaxInt),
		kgo.AllowIdempotentProduceCancellation(),
		kgo.RecordPartitioner(rowPartitioner{kgo.UniformBytesPartitioner(64<<10, true, true, nil)}),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	clientStates.Store(cl, st)
	return cl, nil
}

// defaultBatchMax is franz-go's own batch limit, used for topics whose
// max.message.bytes the relay has not read.
const defaultBatchMax = 1_000_012

// topicLimits holds the max.message.bytes the relay read for each topic.
// The client asks it for a topic's batch limit when it first meets one of
// the topic's partitions, which is usually after the relay has read the
// topic's settings: a batch then never exceeds what the broker accepts, so
// one large row cannot make the broker reject its partition neighbours
// (MESSAGE_TOO_LARGE fails the whole batch).
//
// The client asks only once and keeps the answer for as long as it knows
// the partition (kgo.ProducerBatchMaxBytesFn). So topicLimits also keeps
// what it answered: when the relay learns the limit only later (the first
// check failed) or the limit shrinks, the client's batches may be larger
// than the topic takes, and the relay then hands the client the topic's
// records in groups within the limit (see Sink.groups).
type topicLimits struct {
	m     sync.Map // topic → int32, the limit read
	asked sync.Map // topic → int32, what the client was told
}

func (l *topicLimits) set(topic string, maxBytes int32) {
	if l != nil {
		l.m.Store(topic, maxBytes)
	}
}

// forget drops what is known of topic, for a topic the relay no longer
// tracks. The client keeps what it was told.
func (l *topicLimits) forget(topic string) {
	if l != nil {
		l.m.Delete(topic)
	}
}

func (l *topicLimits) limit(topic string) int32 {
	if v, ok := l.m.Load(topic); ok {
		return min(max(v.(int32), 512), 1<<30)
	}
	return defaultBatchMax
}

// batchMax is the client's kgo.ProducerBatchMaxBytesFn.
func (l *topicLimits) batchMax(topic string) int32 {
	v := l.limit(topic)
	if topic != "" {
		l.asked.Store(topic, v)
	}
	return v
}

// clientFits reports whether the client's own record batches of topic stay
// within maxBytes: what it was told, or will be told when it first meets
// the topic, is no more.
func (l *topicLimits) clientFits(topic string, maxBytes int32) bool {
	if l == nil {
		return defaultBatchMax <= maxBytes
	}
	if v, ok := l.asked.Load(topic); ok {
		return v.(int32) <= maxBytes
	}
	return l.limit(topic) <= maxBytes
}

// clientState is what the relay keeps of a client made by NewClient.
type clientState struct {
	limits *topicLimits
	watch  *brokerWatch
}

// clientStates finds the state of a client made by NewClient.
var clientStates sync.Map // *kgo.Client → *clientState

// stateOf returns client's state, or nil for a client that NewClient
// did not make.
func stateOf(client *kgo.Client) *clientState {
	if v, ok := clientStates.Load(client); ok {
		return v.(*clientState)
	}
	return nil
}

// brokerWatch hears from the client about each connection it opens to a
// broker and each produce request it sends. The client retries failures of
// those on its own, silently, until the produce timeout: without the
// watch the relay would learn of a refused connection one produce timeout
// later, and only as "no answer from Kafka within the produce timeout". It tells its subscribers at
// once when a broker starts failing (its first failure after a success),
// and remembers the cause for the outage's log and alert until that broker
// connects or answers a produce again.
type brokerWatch struct {
	mu      sync.Mutex
	failing map[int32]error // by broker node: why its last attempt failed
	last    int32           // the node that failed last
	subs    []func(error)
}

var (
	_ kgo.HookBrokerConnect = (*brokerWatch)(nil)
	_ kgo.HookBrokerE2E     = (*brokerWatch)(nil)
)

// OnBrokerConnect implements kgo.HookBrokerConnect.
func (w *brokerWatch) OnBrokerConnect(meta kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err == nil {
		w.ok(meta.NodeID)
		return
	}
	w.failed(meta.NodeID, fmt.Errorf("cannot connect to Kafka broker %s: %w", net.JoinHostPort(meta.Host, fmt.Sprint(meta.Port)), err))
}

// OnBrokerE2E implements kgo.HookBrokerE2E: a produce request that was
// answered, or could not be written or read.
func (w *brokerWatch) OnBrokerE2E(meta kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	if key != int16(kmsg.Produce) {
		return
	}
	if err := e2e.Err(); err != nil {
		w.failed(meta.NodeID, fmt.Errorf("produce request to Kafka broker %s failed: %w", net.JoinHostPort(meta.Host, fmt.Sprint(meta.Port)), err))
		return
	}
	w.ok(meta.NodeID)
}

func (w *brokerWatch) ok(node int32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.failing, node)
}

func (w *brokerWatch) failed(node int32, err error) {
	w.mu.Lock()
	if w.failing == nil {
		w.failing = map[int32]error{}
	}
	_, already := w.failing[node]
	w.failing[node], w.last = err, node
	subs := w.subs
	w.mu.Unlock()
	if !already {
		for _, f := range subs {
			f(err)
		}
	}
}

// subscribe makes f hear of each broker's first failure after a success.
func (w *brokerWatch) subscribe(f func(error)) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.subs = append(w.subs, f)
}

// lastCause returns why the latest failure of a broker that has not
// recovered since happened, or nil if none is failing.
func (w *brokerWatch) lastCause() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err, ok := w.failing[w.last]; ok {
		return err
	}
	for _, err := range w.failing {
		return err
	}
	return nil
}
