package relay_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

func TestMetricsCountWhatTheRelayDoes(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "a", "b")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()
	reg := prometheus.NewPedanticRegistry()
	m := relay.NewMetrics(reg)

	db.Insert(t,
		relaytest.Message{Topic: "a", Key: []byte("1"), Payload: []byte("x")},
		relaytest.Message{Topic: "a", Key: []byte("2"), Payload: []byte("x")},
		relaytest.Message{Topic: "b", Key: []byte("3"), Payload: []byte("x")},
		relaytest.Message{Topic: "bad topic", Key: []byte("4"), Payload: []byte("x")},
		relaytest.Message{Topic: "bad topic", Key: []byte("4"), Payload: []byte("behind")},
	)
	cfg := relay.Config{Schema: db.Schema, Metrics: m, Alerter: newRecordingAlerter()}
	r := relay.New(cfg, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 5 {
		t.Fatalf("batch: %d rows, %v", n, err)
	}
	const want = `
# HELP outbox_relay_rows_escalated_total Rows moved to stuck_messages.
# TYPE outbox_relay_rows_escalated_total counter
outbox_relay_rows_escalated_total{topic="bad topic"} 1
# HELP outbox_relay_rows_failed_total Failed produce attempts, by error kind (row_fatal, row_retriable, outage).
# TYPE outbox_relay_rows_failed_total counter
outbox_relay_rows_failed_total{kind="row_fatal",topic="bad topic"} 1
# HELP outbox_relay_rows_sent_total Rows acknowledged by Kafka and marked sent.
# TYPE outbox_relay_rows_sent_total counter
outbox_relay_rows_sent_total{topic="a"} 2
outbox_relay_rows_sent_total{topic="b"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"outbox_relay_rows_sent_total", "outbox_relay_rows_failed_total", "outbox_relay_rows_escalated_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(reg, "outbox_relay_delivery_latency_seconds", "outbox_relay_batch_duration_seconds"); err != nil || n != 2 {
		t.Errorf("latency and batch histograms: %d series, %v; want 2", n, err)
	}

	// The backlog gauges follow the tables: one stuck row, and the row of
	// its key behind it.
	cfg.LagAlertAfter = 20 * time.Millisecond
	cfg.Instance = "metrics"
	runRelay(t, db, brokers, cfg)
	const backlog = `
# HELP outbox_relay_rows_behind_stuck Pending rows with a stuck row of their topic and key before them, as of the last check: held back unless RELAY_STUCK_BLOCKS_KEY=false.
# TYPE outbox_relay_rows_behind_stuck gauge
outbox_relay_rows_behind_stuck 1
# HELP outbox_relay_stuck_rows Rows in stuck_messages, as of the last check.
# TYPE outbox_relay_stuck_rows gauge
outbox_relay_stuck_rows 1
`
	relaytest.WaitFor(t, 10*time.Second, "the stuck_rows and rows_behind_stuck gauges to read 1", func() bool {
		return testutil.GatherAndCompare(reg, strings.NewReader(backlog), "outbox_relay_stuck_rows", "outbox_relay_rows_behind_stuck") == nil
	})
}

// Topic names come from the rows: past a bound, new topics share one
// series, so that ever new topic names cannot grow the scrape for ever.
func TestPerTopicSeriesAreBounded(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "a", "b", "c", "d")
	reg := prometheus.NewPedanticRegistry()
	m := relay.NewMetrics(reg)
	m.SetTopicSeriesCap(2)
	db.Insert(t,
		relaytest.Message{Topic: "a", Payload: []byte("x")},
		relaytest.Message{Topic: "b", Payload: []byte("x")},
		relaytest.Message{Topic: "c", Payload: []byte("x")},
		relaytest.Message{Topic: "d", Payload: []byte("x")},
	)
	r := relay.New(relay.Config{Schema: db.Schema, Metrics: m, Alerter: newRecordingAlerter()}, db.Pool,
		relaytest.NewProducer(t, cluster.ListenAddrs()), testLogger(t))
	if n, err := r.DeliverBatch(context.Background(), nil); err != nil || n != 4 {
		t.Fatalf("batch: %d rows, %v", n, err)
	}
	const want = `
# HELP outbox_relay_rows_sent_total Rows acknowledged by Kafka and marked sent.
# TYPE outbox_relay_rows_sent_total counter
outbox_relay_rows_sent_total{topic="(other)"} 2
outbox_relay_rows_sent_total{topic="a"} 1
outbox_relay_rows_sent_total{topic="b"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "outbox_relay_rows_sent_total"); err != nil {
		t.Error(err)
	}
}
