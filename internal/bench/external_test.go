package bench_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/bench"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// TestExternal measures a relay the bench did not start, as relay bench
// --external-schema measures a deployed one. The outbox already holds the
// application's rows, so the bench's ids do not start at 1. Every bench row
// must be delivered once and in per-key order, rows/s and commit→consumed
// latency must be measured, and the schema and the application's rows must
// be as they were.
func TestExternal(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	brokers := relaytest.NewCluster(t, 4, "orders").ListenAddrs()
	db := relaytest.NewDB(t)
	startRelay(t, db, brokers)
	db.Insert(t,
		relaytest.Message{Topic: "orders", Key: []byte("order-1"), Payload: []byte("created")},
		relaytest.Message{Topic: "orders", Key: []byte("order-1"), Payload: []byte("paid")},
		relaytest.Message{Topic: "orders", Key: []byte("order-2"), Payload: nil, Headers: map[string]string{"type": "deleted"}})
	relaytest.WaitFor(t, 30*time.Second, "the application's rows sent", func() bool { return db.Count(t, "pending") == 0 })
	appRows := func() string {
		var s string
		err := db.Pool.QueryRow(ctx, `SELECT string_agg(format('%s %s %s %s %s %s %s %s %s', id, topic, key, payload, headers, status, sent_at, kafka_partition, kafka_offset), E'\n' ORDER BY id)
			FROM messages WHERE topic = 'orders'`).Scan(&s)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := appRows()

	const preload, streamed, rounds = 2000, 500, 2
	report, err := bench.Run(ctx, bench.Config{
		DatabaseURL:    db.URL,
		Brokers:        brokers,
		ExternalSchema: db.Schema,
		Preload:        preload,
		Rate:           1000,
		Duration:       500 * time.Millisecond,
		Warmup:         100 * time.Millisecond,
		Keys:           100,
		Partitions:     4,
		Rounds:         rounds,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Variants) != 1 || report.Variants[0].Name != "external" || report.Scenario.ExternalSchema != db.Schema {
		t.Fatalf("want one variant, the external relays; got %+v", report)
	}
	v := report.Variants[0]
	if len(v.Phases) != rounds {
		t.Fatalf("%d phases, want %d", len(v.Phases), rounds)
	}
	for _, p := range v.Phases {
		if l := p.Latency; l != nil {
			t.Logf("round %d: %.0f rows/s, commit→consumed p50 %.1f ms p99 %.1f ms", p.Round, p.RowsPerSec, l.P50Ms, l.P99Ms)
		}
		if p.Rows != preload+streamed || p.Streamed != streamed {
			t.Errorf("round %d: %d rows (%d streamed), want %d (%d)", p.Round, p.Rows, p.Streamed, preload+streamed, streamed)
		}
		if p.RowsPerSec <= 0 || p.InsertRate <= 0 {
			t.Errorf("round %d: rows/s %v, insert rows/s %v", p.Round, p.RowsPerSec, p.InsertRate)
		}
		if l := p.Latency; l == nil || l.Until != "consumed" || l.Rows == 0 || l.P50Ms > l.P99Ms || l.P99Ms > l.MaxMs {
			t.Errorf("round %d: latency %+v", p.Round, p.Latency)
		}
		if c := p.Check; c == nil || c.Missing != 0 || c.OrderViolations != 0 || c.Duplicates != 0 || c.Foreign != 0 || c.Records < int(p.Rows) {
			t.Errorf("round %d: check %+v", p.Round, p.Check)
		}
		if p.CPUSeconds != 0 || p.PeakRSSMiB != 0 || p.PGCPUMsPer1k != 0 || p.BrokerCPUMsPer1k != 0 {
			t.Errorf("round %d: cpu %v s, rss %v MiB, pg cpu %v, broker cpu %v: the relay is not the bench's to measure", p.Round, p.CPUSeconds, p.PeakRSSMiB, p.PGCPUMsPer1k, p.BrokerCPUMsPer1k)
		}
	}

	if err := relay.CheckSchema(ctx, db.Pool); err != nil {
		t.Errorf("the schema after the bench: %v", err)
	}
	if after := appRows(); after != before {
		t.Errorf("the application's rows changed:\nbefore\n%s\nafter\n%s", before, after)
	}
	// The bench's rows stay, sent, for the relay's retention to delete.
	var benchRows, sent, stuck int
	err = db.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status = 'sent'), (SELECT count(*) FROM stuck_messages)
		FROM messages WHERE topic LIKE 'bench-%'`).Scan(&benchRows, &sent, &stuck)
	if err != nil {
		t.Fatal(err)
	}
	if want := rounds * (preload + streamed); benchRows != want || sent != want || stuck != 0 {
		t.Errorf("%d bench rows in the outbox, %d sent, %d stuck; want %d, all sent", benchRows, sent, stuck, want)
	}
}

// startRelay runs a relay on db as a deployed one would, until the test
// ends.
func startRelay(t *testing.T, db *relaytest.DB, brokers []string) {
	t.Helper()
	relaytest.RunRelay(t, relay.New(relay.Config{Schema: db.Schema, PollInterval: 100 * time.Millisecond}, db.Pool, relaytest.NewProducer(t, brokers), nil))
}

// TestExternalRefusesInProcessSettings: with relays already running there
// are no relays, baseline or schema of the bench's own to configure.
func TestExternalRefusesInProcessSettings(t *testing.T) {
	t.Parallel()
	base := bench.Config{DatabaseURL: relaytest.DatabaseURL(), Brokers: []string{"127.0.0.1:1"}, ExternalSchema: "outbox", Preload: 10}
	for name, change := range map[string]func(*bench.Config){
		"relays":         func(c *bench.Config) { c.Relays = []int{1} },
		"baseline":       func(c *bench.Config) { c.Baseline = true },
		"kill":           func(c *bench.Config) { c.KillOneAfter = time.Second },
		"delete on send": func(c *bench.Config) { c.DeleteOnSend = true },
		"own schema":     func(c *bench.Config) { c.Schema = "bench_x" },
		"bad name":       func(c *bench.Config) { c.ExternalSchema = "Out-Box" },
	} {
		cfg := base
		change(&cfg)
		if _, err := bench.Run(context.Background(), cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestExternalReportTable: the table says what the external figures are,
// and prints "-" for the relays' CPU and memory, which it did not measure.
func TestExternalReportTable(t *testing.T) {
	t.Parallel()
	r := &bench.Report{
		Scenario: bench.Scenario{ExternalSchema: "outbox", Preload: 100, Rounds: 1},
		Variants: []*bench.VariantReport{{Name: "external", Median: bench.Summary{RowsPerSec: 1234, P50Ms: 2, P90Ms: 3, P99Ms: 4, MaxMs: 5}}},
	}
	var out bytes.Buffer
	if err := r.WriteTable(&out, true); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{"relays already running on schema outbox", "commit→consumed", "fetch delay"} {
		if !strings.Contains(s, want) {
			t.Errorf("table lacks %q:\n%s", want, s)
		}
	}
	var row []string
	for _, l := range strings.Split(s, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "external" {
			row = f
		}
	}
	// variant rows/s insert p50 p90 p99 max cpu pg-cpu writers-pg-cpu pg-vs-writers broker-cpu rss dup order missing
	if len(row) != 16 || row[1] != "1234" || row[7] != "-" || row[8] != "-" || row[9] != "-" || row[10] != "-" || row[11] != "-" || row[12] != "-" {
		t.Errorf("external row %q: want rows/s 1234 and - for cpu, pg cpu, writers' pg cpu and ratio, broker cpu and rss\n%s", row, s)
	}
}
