package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/bench"
	"github.com/outboxrelay/relay/internal/relaytest"
)

// TestBench runs a tiny bench — a preload plus a short stream, baseline and
// one and two relays, one round — against the test Postgres and an
// in-process kfake, and checks that the report adds up.
func TestBench(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("integration test")
	}
	brokers := relaytest.NewCluster(t, 4).ListenAddrs()
	schema := "bench_test_" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "_"))
	stdout, stderr, err := runCLI(t, nil, "bench",
		"--database-url", relaytest.DatabaseURL(), "--brokers", strings.Join(brokers, ","),
		"--schema", schema, "--preload", "1500", "--rate", "1000", "--duration", "500ms", "--warmup", "100ms",
		"--keys", "100", "--partitions", "4", "--batch-size", "200", "--poll-interval", "100ms",
		"--relays", "1,2", "--rounds", "1", "--json")
	if err != nil {
		t.Fatalf("relay bench: %v\n%s", err, stderr)
	}
	var report bench.Report
	if err := json.Unmarshal([]byte(stdout), &report); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, stdout)
	}
	if len(report.Variants) != 3 {
		t.Fatalf("want baseline, relay x1, relay x2; got %d variants", len(report.Variants))
	}
	for _, v := range report.Variants {
		if len(v.Phases) != 1 {
			t.Fatalf("%s: %d phases, want 1", v.Name, len(v.Phases))
		}
		p := v.Phases[0]
		if p.Rows != 2000 || p.Streamed != 500 {
			t.Errorf("%s: %d rows (%d streamed), want 2000 (500)", v.Name, p.Rows, p.Streamed)
		}
		if p.RowsPerSec <= 0 || p.InsertRate <= 0 {
			t.Errorf("%s: rows/s %v, insert rows/s %v", v.Name, p.RowsPerSec, p.InsertRate)
		}
		if p.Latency == nil || p.Latency.Rows == 0 || p.Latency.P50Ms > p.Latency.P99Ms {
			t.Errorf("%s: latency %+v", v.Name, p.Latency)
		}
		c := p.Check
		if c == nil || c.Missing != 0 || c.OrderViolations != 0 || c.Foreign != 0 || c.Records < 2000 {
			t.Errorf("%s: check %+v", v.Name, c)
		}
		// Postgres runs on this machine: the writers' backends are
		// measured, and the relays' against them.
		if p.WriterPGCPUMsPer1k <= 0 {
			t.Errorf("%s: writers' Postgres CPU %v ms per 1k rows", v.Name, p.WriterPGCPUMsPer1k)
		}
		if v.Name != "baseline" && (p.PGCPUMsPer1k <= 0 || p.PGCPUVsWriters != p.PGCPUMsPer1k/p.WriterPGCPUMsPer1k) {
			t.Errorf("%s: Postgres CPU %v ms per 1k rows, %v the writers'", v.Name, p.PGCPUMsPer1k, p.PGCPUVsWriters)
		}
		if v.Name == "baseline" {
			if v.Ratio != nil {
				t.Errorf("baseline has a ratio against itself")
			}
			continue
		}
		if v.Ratio == nil || v.Ratio.RowsPerSec <= 0 {
			t.Errorf("%s: no ratio against the baseline: %+v", v.Name, v.Ratio)
		}
	}
	if report.Variants[2].VsOneRelay <= 0 {
		t.Errorf("relay x2 has no comparison with relay x1")
	}

	conn, err := pgx.Connect(context.Background(), relaytest.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Errorf("schema %s left behind", schema)
	}
}

// TestBenchInsertStorm runs the insert storm: writers insert as fast as
// they can for the duration, next to the relay and next to the reference
// relay whose inserts run no trigger, and every row they committed is
// delivered.
func TestBenchInsertStorm(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("integration test")
	}
	brokers := relaytest.NewCluster(t, 4).ListenAddrs()
	stdout, stderr, err := runCLI(t, nil, "bench",
		"--database-url", relaytest.DatabaseURL(), "--brokers", strings.Join(brokers, ","),
		"--insert-storm", "--writers", "4", "--duration", "1s", "--warmup", "100ms",
		"--keys", "100", "--partitions", "4", "--poll-interval", "100ms", "--rounds", "1", "--json")
	if err != nil {
		t.Fatalf("relay bench: %v\n%s", err, stderr)
	}
	var report bench.Report
	if err := json.Unmarshal([]byte(stdout), &report); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, stdout)
	}
	if !report.Scenario.InsertStorm || len(report.Variants) != 2 || report.Variants[0].Name != "no wake-up" {
		t.Fatalf("want the storm's reference and relay x1; got %+v", report)
	}
	for _, v := range report.Variants {
		p := v.Phases[0]
		if p.Streamed == 0 || p.Rows != p.Streamed || p.InsertRate <= 0 || p.WriterPGCPUMsPer1k <= 0 {
			t.Errorf("%s: %d rows, %d streamed, insert %v rows/s, writers' Postgres CPU %v ms per 1k", v.Name, p.Rows, p.Streamed, p.InsertRate, p.WriterPGCPUMsPer1k)
		}
		if c := p.Check; c == nil || c.Missing != 0 || c.OrderViolations != 0 || c.Records < int(p.Rows) {
			t.Errorf("%s: check %+v", v.Name, c)
		}
	}
	if r := report.Variants[1].Ratio; r == nil || r.InsertRate <= 0 {
		t.Errorf("relay x1: no insert rate against the reference: %+v", r)
	}
}

func TestBenchUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"bench", "--brokers", "x:1"}, // nothing to deliver
		{"bench", "--brokers", "x:1", "--preload", "10", "--relays", "0"},
		{"bench", "--brokers", "x:1", "--preload", "10", "--partitions", "0"},
		{"bench", "--brokers", "x:1", "--preload", "10", "--relays", "1,2", "--kill-one-after", "1s"},
		{"bench", "--brokers", "x:1", "--preload", "10", "--broker-latency", "5ms"}, // not the bench's own broker
		{"bench", "--preload", "10", "--broker-latency", "-5ms"},
		{"bench", "--brokers", "x:1", "--insert-storm", "--rate", "100"}, // a storm has no rate
	} {
		if _, _, err := runCLI(t, nil, args...); exitCode(err) != 2 {
			t.Errorf("relay %v: exit %d (%v), want 2", args, exitCode(err), err)
		}
	}
	// With relays already running: the brokers they produce to are
	// required, and the flags of the bench's own relays are refused.
	ext := []string{"bench", "--external-schema", "outbox", "--preload", "10"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{ext, "--brokers"},
		{slices.Concat(ext, []string{"--brokers", "x:1", "--relays", "2"}), "--relays"},
		{slices.Concat(ext, []string{"--brokers", "x:1", "--baseline"}), "--baseline"},
		{slices.Concat(ext, []string{"--brokers", "x:1", "--kill-one-after", "1s", "--outage", "1s"}), "--kill-one-after, --outage"},
		{slices.Concat(ext, []string{"--brokers", "x:1", "--delete-on-send"}), "--delete-on-send"},
		{slices.Concat(ext, []string{"--brokers", "x:1", "--schema", "bench_x"}), "--schema"},
		{[]string{"bench", "--external-schema", "Outbox", "--brokers", "x:1", "--preload", "10"}, "--external-schema"},
	} {
		_, _, err := runCLI(t, nil, c.args...)
		if exitCode(err) != 2 || !strings.Contains(fmt.Sprint(err), c.want) {
			t.Errorf("relay %v: exit %d (%v), want 2 and a message naming %s", c.args, exitCode(err), err, c.want)
		}
	}
	stdout, _, _ := runCLI(t, nil, "--help")
	if strings.Contains(stdout, "bench-kafka") || !strings.Contains(stdout, "bench ") {
		t.Errorf("top-level usage should list bench and hide bench-kafka:\n%s", stdout)
	}
}

// TestBenchExternal runs relay bench --external-schema against a relay
// binary started as a deployment would run it: the bench must start no
// relay of its own, see every row delivered, and leave the schema in place.
func TestBenchExternal(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("integration test")
	}
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 3).ListenAddrs()
	p := startRelay(t, relayEnv(db, brokers), "run")
	p.waitLog(30*time.Second, "http_listening")

	stdout, stderr, err := runCLI(t, nil, "bench",
		"--database-url", db.URL, "--external-schema", db.Schema, "--brokers", strings.Join(brokers, ","),
		"--preload", "1000", "--rate", "500", "--duration", "400ms", "--warmup", "100ms",
		"--keys", "50", "--partitions", "3", "--rounds", "1", "--json")
	if err != nil {
		t.Fatalf("relay bench: %v\n%s", err, stderr)
	}
	var report bench.Report
	if err := json.Unmarshal([]byte(stdout), &report); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, stdout)
	}
	if len(report.Variants) != 1 || len(report.Variants[0].Phases) != 1 {
		t.Fatalf("want one phase of the external relays; got %s", stdout)
	}
	ph := report.Variants[0].Phases[0]
	if ph.Rows != 1200 || ph.RowsPerSec <= 0 || ph.Latency == nil || ph.Latency.Until != "consumed" || ph.Latency.Rows == 0 {
		t.Errorf("phase %+v, latency %+v", ph, ph.Latency)
	}
	if c := ph.Check; c == nil || c.Missing != 0 || c.OrderViolations != 0 || c.Duplicates != 0 || c.Foreign != 0 {
		t.Errorf("check %+v", ph.Check)
	}
	var sent int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM messages WHERE status = 'sent'`).Scan(&sent); err != nil {
		t.Fatalf("the schema after the bench: %v", err)
	}
	if sent != 1200 {
		t.Errorf("%d sent rows in the outbox after the bench, want its 1200", sent)
	}
}

// The bench's broker with --broker-latency answers a produce request no
// sooner than the latency asked for, and still takes the record.
func TestDelayProduce(t *testing.T) {
	t.Parallel()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "t"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const latency = 300 * time.Millisecond
	delayProduce(c, latency)
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.DefaultProduceTopic("t"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.Ping(ctx); err != nil { // metadata first: only produce requests wait
		t.Fatal(err)
	}
	for i := range 2 {
		start := time.Now()
		if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("x")}).FirstErr(); err != nil {
			t.Fatalf("produce %d: %v", i, err)
		}
		if took := time.Since(start); took < latency {
			t.Errorf("produce %d acknowledged after %v, want at least %v", i, took, latency)
		}
	}
}

// TestBenchOutput runs a tiny bench twice through run(...) and checks what
// it prints: the settings on stderr before the first phase, plain progress
// lines for a phase longer than the progress interval (stderr is not a
// terminal here), a table whose lines fit 100 columns, and the details
// columns with --details only.
func TestBenchOutput(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("integration test")
	}
	brokers := relaytest.NewCluster(t, 4).ListenAddrs()
	bench := func(name string, extra ...string) (string, string) {
		t.Helper()
		schema := "bench_test_output_" + name
		args := append([]string{"bench",
			"--database-url", relaytest.DatabaseURL(), "--brokers", strings.Join(brokers, ","),
			"--schema", schema, "--preload", "1000", "--rate", "1000", "--duration", "300ms", "--warmup", "50ms",
			"--keys", "100", "--partitions", "4", "--batch-size", "200", "--poll-interval", "100ms",
			"--relays", "1,2", "--rounds", "1", "--progress-interval", "20ms"}, extra...)
		stdout, stderr, err := runCLI(t, nil, args...)
		if err != nil {
			t.Fatalf("relay bench %s: %v\n%s", name, err, stderr)
		}
		return stdout, stderr
	}
	plain, stderr := bench("plain")

	settings := strings.Index(stderr, "settings:\n  preload 1000 rows per phase\n  stream 1000 rows/s for 0.3s")
	firstPhase := strings.Index(stderr, "round 1 ")
	if settings < 0 || firstPhase < 0 || settings > firstPhase {
		t.Errorf("settings (at %d) do not come before the first phase line (at %d):\n%s", settings, firstPhase, stderr)
	}
	for _, want := range []string{"batch 200", "in-flight default", "poll 100ms", "broker latency 0ms"} {
		if !strings.Contains(stderr[:max(firstPhase, 0)], want) {
			t.Errorf("settings lack %q:\n%s", want, stderr)
		}
	}
	// The 300 ms stream alone outlasts many 20 ms intervals.
	progress := 0
	for _, l := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(l, "round 1 relay x1: delivering ") && strings.HasSuffix(l, "/300ms") {
			progress++
		}
		if strings.ContainsAny(l, "\r\033") {
			t.Errorf("terminal control characters on a non-terminal: %q", l)
		}
	}
	if progress < 2 {
		t.Errorf("%d progress lines for relay x1 delivering, want several:\n%s", progress, stderr)
	}

	checkWidth := func(name, out string) {
		t.Helper()
		for _, l := range strings.Split(out, "\n") {
			if n := utf8.RuneCountInString(l); n > 100 {
				t.Errorf("%s: line of %d columns: %q", name, n, l)
			}
		}
	}
	checkWidth("table", plain)
	checkWidth("settings and progress", stderr)
	for _, want := range []string{"variant", "rows/s", "p99 ms", "relay x2", "  vs baseline", "  vs relay x1"} {
		if !strings.Contains(plain, want) {
			t.Errorf("table lacks %q:\n%s", want, plain)
		}
	}
	detailCols := []string{"p90 ms", "writers' pg cpu/1k", "pg cpu vs writers", "broker cpu/1k"}
	for _, col := range detailCols {
		if strings.Contains(plain, col) {
			t.Errorf("table without --details has %q:\n%s", col, plain)
		}
	}
	detailed, _ := bench("details", "--details")
	for _, col := range detailCols {
		if !strings.Contains(detailed, col) {
			t.Errorf("table with --details lacks %q:\n%s", col, detailed)
		}
	}
	t.Logf("table:\n%s\ndetails:\n%s", plain, detailed)
}
