package verify_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/verify"
)

// TestPeriodicOnce checks one run of the daemon's verify: metrics of the
// last run, and an alert only for missing and mismatched rows.
func TestPeriodicOnce(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "orders", "users")
	brokers := cluster.ListenAddrs()
	relaytest.Deliver(t, db, brokers, append(messages("orders", 6), messages("users", 6)...)...)
	cl := relaytest.NewProducer(t, brokers)
	met := verify.NewMetrics(prometheus.NewRegistry())
	runs, checked, problems := verify.MetricsOf(met)
	var mu sync.Mutex
	var alerts []alert.Alert
	pv := &verify.Periodic{
		Pool: db.Pool, Client: cl, Interval: time.Minute, Logger: slog.New(slog.DiscardHandler), Metrics: met,
		Alerter: alert.Func(func(_ context.Context, a alert.Alert) { mu.Lock(); alerts = append(alerts, a); mu.Unlock() }),
	}
	ctx := context.Background()
	gauge := func(topic string, p verify.Problem) float64 {
		return testutil.ToFloat64(problems.WithLabelValues(topic, string(p)))
	}

	if _, err := pv.Once(ctx, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(runs.WithLabelValues("ok")); got != 1 || len(alerts) != 0 ||
		testutil.ToFloat64(checked) != 12 || gauge("orders", verify.ProblemMissing) != 0 {
		t.Fatalf("clean run: runs ok %v, checked %v, alerts %v", got, testutil.ToFloat64(checked), alerts)
	}
	if last, ok := pv.Last(); !ok || last.Checked != 12 || last.Err != "" {
		t.Fatalf("last result after a clean run: %+v, %v", last, ok)
	}

	// users loses two records to retention (no alert); one orders row
	// points past the end of its log (missing: alert).
	relaytest.DeleteRecords(t, brokers, "users", 0, 2)
	if _, err := db.Pool.Exec(ctx, `UPDATE messages SET kafka_offset = 1000 WHERE id = (SELECT max(id) FROM messages WHERE topic = 'orders')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pv.Once(ctx, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(runs.WithLabelValues("problems")); got != 1 {
		t.Fatalf("runs with problems = %v, want 1", got)
	}
	if gauge("orders", verify.ProblemMissing) != 1 || gauge("users", verify.ProblemTruncated) != 2 || gauge("users", verify.ProblemMissing) != 0 {
		t.Fatalf("problem gauges: orders missing %v, users truncated %v", gauge("orders", verify.ProblemMissing), gauge("users", verify.ProblemTruncated))
	}
	if len(alerts) != 1 || alerts[0].Kind != alert.KindVerifyFailed || alerts[0].Topic != "orders" || alerts[0].Count != 1 {
		t.Fatalf("alerts %+v, want one verify_failed for orders", alerts)
	}

	// A window with no rows: the gauges of the last run are gone.
	if _, err := pv.Once(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(problems); n != 0 {
		t.Fatalf("%d problem series after an empty run, want 0", n)
	}
}
