package relay

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outboxrelay/relay/internal/pgstore"
)

// Metrics records what the relay does, for Prometheus. Create it with
// NewMetrics and pass it in Config; a nil *Metrics records nothing, so tests
// and embedders that do not scrape need not care.
type Metrics struct {
	sent          *prometheus.CounterVec
	failed        *prometheus.CounterVec
	escalated     *prometheus.CounterVec
	batch         prometheus.Histogram
	latency       prometheus.Histogram
	kafkaDown     prometheus.Gauge
	pending       prometheus.Gauge
	oldestPending prometheus.Gauge
	stuck         prometheus.Gauge
	behindStuck   prometheus.Gauge
	notDurable    *prometheus.CounterVec
	instances     prometheus.Gauge
	reserved      *prometheus.CounterVec

	// topicsMu guards topicSeries, the topics that have series of their
	// own, at most topicCap of them.
	topicsMu    sync.Mutex
	topicSeries map[string]bool
	topicCap    int
}

// maxTopicSeries bounds the topics that get series of their own in the
// per-topic metrics. Topic names come from the rows, so an application
// writing to ever new topics (or rows with made-up topic names) must not
// grow the relay's memory and the scrape without bound: the topics met
// after the first maxTopicSeries share the label topic="(other)", which no
// Kafka topic can be named.
const maxTopicSeries = 1000

// otherTopics labels the series of topics past maxTopicSeries.
const otherTopics = "(other)"

// topic returns the label of topic's series.
func (m *Metrics) topic(topic string) string {
	m.topicsMu.Lock()
	defer m.topicsMu.Unlock()
	if m.topicSeries[topic] {
		return topic
	}
	if len(m.topicSeries) < m.topicCap {
		m.topicSeries[topic] = true
		return topic
	}
	return otherTopics
}

// NewMetrics registers the relay's metrics, named outbox_relay_*, on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns = "outbox_relay"
	m := &Metrics{
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "rows_sent_total",
			Help: "Rows acknowledged by Kafka and marked sent."}, []string{"topic"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "rows_failed_total",
			Help: "Failed produce attempts, by error kind (row_fatal, row_retriable, outage)."}, []string{"topic", "kind"}),
		escalated: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "rows_escalated_total",
			Help: "Rows moved to stuck_messages."}, []string{"topic"}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "batch_duration_seconds",
			Help:    "Time of one claim → produce → mark transaction that claimed rows.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "delivery_latency_seconds",
			Help:    "From a row's created_at (database clock) to Kafka's acknowledgement (relay clock).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 20)}),
		kafkaDown: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "kafka_unavailable",
			Help: "1 while the relay sees Kafka as unavailable (an outage), else 0."}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "pending_rows",
			Help: "Rows waiting to be delivered, as of the last check."}),
		oldestPending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "oldest_pending_age_seconds",
			Help: "Age of the oldest pending row, as of the last check; 0 when none."}),
		stuck: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "stuck_rows",
			Help: "Rows in stuck_messages, as of the last check."}),
		behindStuck: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "rows_behind_stuck",
			Help: "Pending rows with a stuck row of their topic and key before them, as of the last check: held back unless RELAY_STUCK_BLOCKS_KEY=false."}),
		notDurable: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "topic_durability_warnings_total",
			Help: "Times a topic was found with settings that can lose acknowledged records (RF < 3, min.insync.replicas < 2, unclean election)."}, []string{"topic"}),
		instances: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "instances",
			Help: "Relays counted on this outbox, this one included, as of the last check; they split RELAY_IN_FLIGHT_BATCHES in slot order, and one left without a share is a standby."}),
		reserved: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "reserved_headers_replaced_total",
			Help: "Application headers named outbox-id or outbox-uuid that the relay's own header replaced."}, []string{"topic"}),

		topicSeries: map[string]bool{},
		topicCap:    maxTopicSeries,
	}
	reg.MustRegister(m.sent, m.failed, m.escalated, m.batch, m.latency, m.kafkaDown, m.pending, m.oldestPending, m.stuck, m.behindStuck, m.notDurable, m.instances, m.reserved)
	return m
}

// batchDone records one batch that claimed rows.
func (m *Metrics) batchDone(rows []row, out outcome, escalated []failure, took time.Duration) {
	if m == nil {
		return
	}
	m.batch.Observe(took.Seconds())
	now := time.Now()
	sent := make(map[int64]bool, len(out.sentIDs))
	for _, id := range out.sentIDs {
		sent[id] = true
	}
	// One series lookup a topic, not one a row: a batch is mostly of one
	// topic, and each lookup takes the label lock and hashes the label.
	var perTopic topicCounts
	for _, x := range rows {
		if sent[x.ID] {
			perTopic.add(x.Topic)
			m.latency.Observe(now.Sub(x.CreatedAt).Seconds())
		}
	}
	for _, c := range perTopic.counts {
		m.sent.WithLabelValues(m.topic(c.topic)).Add(float64(c.n))
	}
	for _, f := range out.failed {
		m.failed.WithLabelValues(m.topic(f.row.Topic), f.kind.String()).Inc()
	}
	for _, f := range escalated {
		m.escalated.WithLabelValues(m.topic(f.row.Topic)).Inc()
	}
}

// topicCounts counts rows by topic, in the order the topics first appear
// (which decides the topics that get series of their own, see topic).
type topicCounts struct {
	at     map[string]int // topic → index in counts
	counts []struct {
		topic string
		n     int
	}
}

func (c *topicCounts) add(topic string) {
	if n := len(c.counts); n > 0 && c.counts[n-1].topic == topic {
		c.counts[n-1].n++ // the same topic as the last row: no lookup
		return
	}
	if i, ok := c.at[topic]; ok {
		c.counts[i].n++
		return
	}
	if c.at == nil {
		c.at = map[string]int{}
	}
	c.at[topic] = len(c.counts)
	c.counts = append(c.counts, struct {
		topic string
		n     int
	}{topic, 1})
}

func (m *Metrics) setKafkaDown(down bool) {
	if m == nil {
		return
	}
	v := 0.0
	if down {
		v = 1
	}
	m.kafkaDown.Set(v)
}

func (m *Metrics) setBacklog(s pgstore.Backlog) {
	if m == nil {
		return
	}
	m.pending.Set(float64(s.Pending))
	m.oldestPending.Set(s.Oldest.Seconds())
	m.stuck.Set(float64(s.Stuck))
	m.behindStuck.Set(float64(s.Behind))
}

func (m *Metrics) topicNotDurable(topic string) {
	if m == nil {
		return
	}
	m.notDurable.WithLabelValues(m.topic(topic)).Inc()
}

// setInstances records how many relays share the outbox.
func (m *Metrics) setInstances(n int) {
	if m == nil {
		return
	}
	m.instances.Set(float64(n))
}

// reservedHeaderReplaced counts an application header that the relay's own
// replaced.
func (m *Metrics) reservedHeaderReplaced(topic string) {
	if m == nil {
		return
	}
	m.reserved.WithLabelValues(m.topic(topic)).Inc()
}
