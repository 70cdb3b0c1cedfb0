package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/verify"
)

// deliverRows inserts n rows of each topic and runs a relay until all are
// sent.
func deliverRows(t *testing.T, db *relaytest.DB, brokers []string, n int, topics ...string) {
	t.Helper()
	var msgs []relaytest.Message
	for _, topic := range topics {
		for i := range n {
			msgs = append(msgs, relaytest.Message{Topic: topic, Key: []byte("k" + strconv.Itoa(i%3)), Payload: []byte("p" + strconv.Itoa(i))})
		}
	}
	db.Insert(t, msgs...)
	stop := relaytest.RunRelay(t, relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), nil))
	relaytest.WaitFor(t, 30*time.Second, "every row sent", func() bool { return db.Count(t, "pending") == 0 })
	stop()
}

func TestVerifyCommand(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "orders", "users")
	brokers := cluster.ListenAddrs()
	deliverRows(t, db, brokers, 10, "orders", "users")
	env := map[string]string{"RELAY_DATABASE_URL": db.URL, "RELAY_SCHEMA": db.Schema, "RELAY_KAFKA_BROKERS": strings.Join(brokers, ",")}

	out, _, err := runCLI(t, env, "verify")
	if err != nil {
		t.Fatalf("verify of delivered rows: %v\n%s", err, out)
	}
	if !strings.Contains(out, "20 rows checked: 20 ok, 0 missing, 0 truncated, 0 mismatched") || !strings.Contains(out, "orders  0 ") {
		t.Fatalf("verify printed:\n%s", out)
	}

	// Retention takes the first 4 records of orders; a row of users now
	// points at another record.
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var offs kadm.Offsets
	offs.Add(kadm.Offset{Topic: "orders", Partition: 0, At: 4})
	if _, err := kadm.NewClient(cl).DeleteRecords(context.Background(), offs); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(context.Background(),
		`UPDATE messages SET kafka_offset = kafka_offset + 1 WHERE id = (SELECT min(id) FROM messages WHERE topic = 'users')`); err != nil {
		t.Fatal(err)
	}

	out, _, err = runCLI(t, env, "verify", "--json")
	if code := exitCode(err); code != 1 {
		t.Fatalf("verify with problems: exit %d (%v), want 1", code, err)
	}
	if !strings.Contains(err.Error(), "20 rows checked: 15 ok, 0 missing, 4 truncated, 1 mismatched") {
		t.Fatalf("verify error %q", err)
	}
	var rep verifyJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json is not JSON: %v\n%s", err, out)
	}
	if rep.OK || rep.Total.Truncated != 4 || rep.Total.Mismatched != 1 || len(rep.Topics) != 2 || rep.Topics[0].Truncated != 4 ||
		rep.Topics[1].Mismatched != 1 || len(rep.Examples) != 5 || rep.Since != nil {
		t.Fatalf("--json report: %+v", rep)
	}

	// --allow-truncated still fails on the mismatch; --topic orders leaves
	// only the truncation, which it allows.
	_, _, err = runCLI(t, env, "verify", "--allow-truncated")
	if exitCode(err) != 1 {
		t.Fatalf("verify --allow-truncated with a mismatch: %v, want exit 1", err)
	}
	out, _, err = runCLI(t, env, "verify", "--allow-truncated", "--topic", "orders,nothing", "--since", "1h")
	if err != nil {
		t.Fatalf("verify --allow-truncated --topic orders: %v\n%s", err, out)
	}
	if !strings.Contains(out, "10 rows checked: 6 ok, 0 missing, 4 truncated") || !strings.Contains(out, "below the log start offset 4") {
		t.Fatalf("verify --topic orders printed:\n%s", out)
	}

	// A topic the broker does not have: every row missing.
	if _, err := db.Pool.Exec(context.Background(), `UPDATE messages SET topic = 'deleted' WHERE topic = 'users'`); err != nil {
		t.Fatal(err)
	}
	_, _, err = runCLI(t, env, "verify", "--topic", "deleted")
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "10 rows checked: 0 ok, 10 missing") {
		t.Fatalf("verify of a deleted topic: %v", err)
	}

	// An empty window passes, and says so.
	out, stderr, err := runCLI(t, env, "verify", "--since", "2099-01-01")
	if err != nil || !strings.Contains(out, "0 rows checked") || !strings.Contains(stderr, "no sent rows in the window") {
		t.Fatalf("verify of an empty window: %v\n%s\n%s", err, out, stderr)
	}

	for _, args := range [][]string{{"verify", "--since", "yesterday"}, {"verify", "extra"}, {"verify", "--chunk-size", "0"}} {
		if _, _, err := runCLI(t, env, args...); exitCode(err) != 2 {
			t.Errorf("relay %v: %v, want exit 2", args, err)
		}
	}
}

// TestPeriodicVerifyOnce checks one run of the daemon's verify: metrics of
// the last run, and an alert only for missing and mismatched rows.
func TestPeriodicVerifyOnce(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "orders", "users")
	brokers := cluster.ListenAddrs()
	deliverRows(t, db, brokers, 6, "orders", "users")
	cl := relaytest.NewProducer(t, brokers)
	met := newMetrics().forOutbox("")
	var mu sync.Mutex
	var alerts []alert.Alert
	pv := &periodicVerify{
		pool: db.Pool, client: cl, interval: time.Minute, log: slog.New(slog.DiscardHandler), met: met.verify,
		alerter: alert.Func(func(_ context.Context, a alert.Alert) { mu.Lock(); alerts = append(alerts, a); mu.Unlock() }),
	}
	ctx := context.Background()
	gauge := func(topic string, p verify.Problem) float64 {
		return testutil.ToFloat64(met.verify.problems.WithLabelValues(topic, string(p)))
	}

	if _, err := pv.once(ctx, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(met.verify.runs.WithLabelValues("ok")); got != 1 || len(alerts) != 0 ||
		testutil.ToFloat64(met.verify.checked) != 12 || gauge("orders", verify.ProblemMissing) != 0 {
		t.Fatalf("clean run: runs ok %v, checked %v, alerts %v", got, testutil.ToFloat64(met.verify.checked), alerts)
	}

	// users loses two records to retention (no alert); one orders row
	// points past the end of its log (missing: alert).
	var offs kadm.Offsets
	offs.Add(kadm.Offset{Topic: "users", Partition: 0, At: 2})
	if _, err := kadm.NewClient(cl).DeleteRecords(ctx, offs); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE messages SET kafka_offset = 1000 WHERE id = (SELECT max(id) FROM messages WHERE topic = 'orders')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pv.once(ctx, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(met.verify.runs.WithLabelValues("problems")); got != 1 {
		t.Fatalf("runs with problems = %v, want 1", got)
	}
	if gauge("orders", verify.ProblemMissing) != 1 || gauge("users", verify.ProblemTruncated) != 2 || gauge("users", verify.ProblemMissing) != 0 {
		t.Fatalf("problem gauges: orders missing %v, users truncated %v", gauge("orders", verify.ProblemMissing), gauge("users", verify.ProblemTruncated))
	}
	if len(alerts) != 1 || alerts[0].Kind != alert.KindVerifyFailed || alerts[0].Topic != "orders" || alerts[0].Count != 1 {
		t.Fatalf("alerts %+v, want one verify_failed for orders", alerts)
	}

	// A window with no rows: the gauges of the last run are gone.
	if _, err := pv.once(ctx, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(met.verify.problems); n != 0 {
		t.Fatalf("%d problem series after an empty run, want 0", n)
	}
}

// TestRunVerifiesPeriodically runs the daemon with RELAY_VERIFY_INTERVAL
// and makes a sent row's record go missing.
func TestRunVerifiesPeriodically(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "orders")
	brokers := cluster.ListenAddrs()
	p := startRelay(t, relayEnv(db, brokers, "RELAY_VERIFY_INTERVAL", "100ms", "RELAY_SHUTDOWN_TIMEOUT", "5s"), "run")
	httpAddr := p.waitLog(30*time.Second, "http_listening")["addr"].(string)
	db.Insert(t, relaytest.Message{Topic: "orders", Key: []byte("k"), Payload: []byte("a")}, relaytest.Message{Topic: "orders", Key: []byte("k"), Payload: []byte("b")})
	waitSent(t, db, 2, 30*time.Second)
	if _, err := db.Pool.Exec(context.Background(), `UPDATE messages SET kafka_offset = 1000 WHERE id = (SELECT max(id) FROM messages)`); err != nil {
		t.Fatal(err)
	}
	p.waitLine(30*time.Second, "stderr", "a verify_failed alert", func(l string) bool {
		return strings.Contains(l, `"alert_kind":"verify_failed"`) && strings.Contains(l, `"topic":"orders"`)
	})
	if fields := p.waitLog(5*time.Second, "verify_problems"); fields["missing"] != float64(1) {
		t.Fatalf("verify_problems log: %v", fields)
	}
	_, body := httpGet(t, "http://"+httpAddr+"/metrics")
	for _, want := range []string{`outbox_relay_verify_problems{problem="missing",topic="orders"} 1`, `outbox_relay_verify_runs_total{result="problems"}`} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	stopRelay(t, p, 8*time.Second)
}

func TestVerifyIntervalConfig(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(mapEnv(map[string]string{"RELAY_VERIFY_INTERVAL": "5m"}))
	if err != nil || cfg.VerifyInterval != 5*time.Minute {
		t.Fatalf("RELAY_VERIFY_INTERVAL=5m: %v, %v", cfg.VerifyInterval, err)
	}
	if cfg, err := loadConfig(mapEnv(nil)); err != nil || cfg.VerifyInterval != 0 {
		t.Fatalf("default: %v, %v; want 0 (off)", cfg.VerifyInterval, err)
	}
	for _, tt := range []struct{ env map[string]string }{
		{map[string]string{"RELAY_VERIFY_INTERVAL": "-1m"}},
		{map[string]string{"RELAY_VERIFY_INTERVAL": "often"}},
		{map[string]string{"RELAY_VERIFY_INTERVAL": "1m", "RELAY_SENT_RETENTION": "0"}},
	} {
		_, err := loadConfig(mapEnv(tt.env))
		if exitCode(err) != 2 || !strings.Contains(err.Error(), "RELAY_VERIFY_INTERVAL") {
			t.Errorf("%v: %v; want a usage error naming RELAY_VERIFY_INTERVAL", tt.env, err)
		}
	}
}
