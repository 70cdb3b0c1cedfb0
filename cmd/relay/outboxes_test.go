package main

// Several outboxes in one process (RELAY_SCHEMA=tenant_a,tenant_b): each
// delivers on its own, is labelled in metrics and logs, and a broken one
// neither stops the others nor needs a restart once fixed.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/relay/internal/relaytest"
)

// daemonRun is "relay run" running in this test's process.
type daemonRun struct {
	t        *testing.T
	logs     *syncBuffer
	httpAddr string
}

// runDaemon runs "relay run" with env until the test ends.
func runDaemon(t *testing.T, env map[string]string) *daemonRun {
	t.Helper()
	d := &daemonRun{t: t, logs: &syncBuffer{}, httpAddr: closedPort(t)}
	env["RELAY_HTTP_ADDR"] = d.httpAddr
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run"}, mapEnv(env), io.Discard, d.logs) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		if t.Failed() {
			t.Logf("relay log:\n%s", d.logs.String())
		}
	})
	return d
}

func (d *daemonRun) get(path string) (int, string) {
	resp, err := http.Get("http://" + d.httpAddr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// logged reports whether a JSON log line has message msg and every field of
// want.
func (d *daemonRun) logged(msg string, want map[string]string) bool {
	for line := range strings.Lines(d.logs.String()) {
		var f map[string]any
		if json.Unmarshal([]byte(line), &f) != nil || f["msg"] != msg {
			continue
		}
		match := true
		for k, v := range want {
			if fmt.Sprint(f[k]) != v {
				match = false
			}
		}
		if match {
			return true
		}
	}
	return false
}

// Two tenants' outboxes in one process: every row of each is delivered once,
// intact and in per-key order, and the metrics, the logs and /readyz name
// each outbox.
func TestSeveralOutboxesDeliverSideBySide(t *testing.T) {
	t.Parallel()
	a, b := relaytest.NewDB(t), relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 3, "a.orders", "b.orders")
	brokers := cluster.ListenAddrs()
	d := runDaemon(t, map[string]string{
		"RELAY_DATABASE_URL":  a.URL,
		"RELAY_SCHEMA":        a.Schema + "," + b.Schema,
		"RELAY_KAFKA_BROKERS": brokers[0],
		"RELAY_BATCH_SIZE":    "50",
	})

	// Each tenant's rows go to a topic of its own: ids of two outboxes
	// overlap, and the order checker follows outbox-id.
	gen := func(topic string) func(w, i int) relaytest.Message {
		return func(w, i int) relaytest.Message {
			return relaytest.Message{Topic: topic, Key: fmt.Appendf(nil, "k%d-%d", w, i%5), Payload: fmt.Appendf(nil, "%s %d/%d", topic, w, i), Headers: map[string]string{}}
		}
	}
	rowsA := insertConcurrently(t, a.Pool, 4, 600, 10, gen("a.orders"))
	rowsB := insertConcurrently(t, b.Pool, 4, 600, 10, gen("b.orders"))
	checkDelivery(t, rowsA, consumeIDs(t, brokers, rowsA, time.Minute, "a.orders"), false)
	checkDelivery(t, rowsB, consumeIDs(t, brokers, rowsB, time.Minute, "b.orders"), false)
	waitSent(t, a, 600, 30*time.Second)
	waitSent(t, b, 600, 30*time.Second)

	relaytest.WaitFor(t, 30*time.Second, "/readyz to report both outboxes ready", func() bool {
		code, body := d.get("/readyz")
		return code == http.StatusOK && body == a.Schema+": ok\n"+b.Schema+": ok\n"
	})
	_, metrics := d.get("/metrics")
	for _, o := range []struct{ schema, topic string }{{a.Schema, "a.orders"}, {b.Schema, "b.orders"}} {
		for _, want := range []string{
			fmt.Sprintf(`outbox_relay_rows_sent_total{outbox=%q,topic=%q} 600`, o.schema, o.topic),
			fmt.Sprintf(`outbox_relay_ready{outbox=%q} 1`, o.schema),
			fmt.Sprintf(`outbox_relay_db_pool_connections_max{outbox=%q}`, o.schema),
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
		// The Kafka client's metrics (kprom) too: one client per outbox.
		if !regexp.MustCompile(`(?m)^outbox_relay_kafka_\w+\{[^}]*outbox="` + o.schema + `"`).MatchString(metrics) {
			t.Errorf("/metrics has no Kafka client series labelled outbox=%s", o.schema)
		}
		if !d.logged("migrations_applied", map[string]string{"outbox": o.schema, "schema": o.schema}) {
			t.Errorf("no migrations_applied log line labelled outbox=%s", o.schema)
		}
	}
}

// One outbox of two is broken (its schema was never migrated, and the relay
// does not migrate at start): the other delivers everything, the broken one
// is logged, alerted, shown in /readyz and outbox_relay_ready, and retried;
// once an operator migrates it (relay migrate up --outbox), it delivers
// without a restart.
func TestBrokenOutboxDoesNotStopTheOthers(t *testing.T) {
	t.Parallel()
	good := relaytest.NewDB(t)
	broken := good.Schema + "_b" // never migrated: no such schema yet
	t.Cleanup(func() { dropSchema(t, broken) })
	cluster := relaytest.NewCluster(t, 1, "good", "late")
	brokers := cluster.ListenAddrs()
	env := map[string]string{
		"RELAY_DATABASE_URL":     good.URL,
		"RELAY_SCHEMA":           good.Schema + "," + broken,
		"RELAY_KAFKA_BROKERS":    brokers[0],
		"RELAY_MIGRATE_ON_START": "false",
	}
	d := runDaemon(t, env)

	rows := insertConcurrently(t, good.Pool, 2, 200, 10, func(w, i int) relaytest.Message {
		return relaytest.Message{Topic: "good", Key: fmt.Appendf(nil, "k%d", i%7), Payload: fmt.Appendf(nil, "%d/%d", w, i), Headers: map[string]string{}}
	})
	checkDelivery(t, rows, consumeIDs(t, brokers, rows, time.Minute, "good"), false)
	waitSent(t, good, 200, 30*time.Second)

	relaytest.WaitFor(t, 30*time.Second, "the broken outbox to be logged, alerted and retried", func() bool {
		return d.logged("outbox_unavailable", map[string]string{"outbox": broken, "attempt": "2"}) &&
			d.logged("alert", map[string]string{"alert_kind": "outbox_unavailable", "outbox": broken})
	})
	code, body := d.get("/readyz")
	wantBody := good.Schema + ": ok\n" + broken + ": starting: migrations: the schema is not migrated or not readable\n"
	if code != http.StatusOK || body != wantBody {
		t.Errorf("/readyz with one broken outbox: %d %q, want 200 %q", code, body, wantBody)
	}
	_, metrics := d.get("/metrics")
	for _, want := range []string{
		fmt.Sprintf(`outbox_relay_ready{outbox=%q} 0`, broken),
		fmt.Sprintf(`outbox_relay_ready{outbox=%q} 1`, good.Schema),
		fmt.Sprintf(`outbox_relay_alerts_total{kind="outbox_unavailable",outbox=%q}`, broken),
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// The operator fixes it; the running relay picks it up.
	if out, _, err := runCLI(t, env, "migrate", "up", "--outbox", broken); err != nil || !strings.Contains(out, "schema "+broken+": applied") {
		t.Fatalf("relay migrate up --outbox %s: %q, %v", broken, out, err)
	}
	fixed := relaytest.NewDBWithSchema(t, broken) // migrated already: only opens a pool
	id := fixed.Insert(t, relaytest.Message{Topic: "late", Key: []byte("k"), Payload: []byte("after the fix")})[0]
	recs := relaytest.Consume(t, brokers, 1, 90*time.Second, "late")
	if got, _ := relaytest.OutboxID(recs[0]); got != id {
		t.Errorf("delivered outbox-id %d, want %d", got, id)
	}
	relaytest.WaitFor(t, 30*time.Second, "/readyz to report both outboxes ready", func() bool {
		code, body := d.get("/readyz")
		return code == http.StatusOK && body == good.Schema+": ok\n"+broken+": ok\n"
	})
}

// With several outboxes, the commands that act on one want --outbox, say
// which there are when it is missing or unknown, and act on the one named.
func TestStuckCommandsWithSeveralOutboxes(t *testing.T) {
	t.Parallel()
	dbA, env := stuckEnv(t)
	dbB := relaytest.NewDB(t)
	env["RELAY_SCHEMA"] = dbA.Schema + "," + dbB.Schema
	choices := dbA.Schema + ", " + dbB.Schema

	for _, args := range [][]string{{"stuck", "list"}, {"stuck", "requeue", "10"}, {"verify"}, {"migrate", "status"}, {"resend", "--ids", "1"}} {
		_, _, err := runCLI(t, env, args...)
		if exitCode(err) != 2 || !strings.Contains(err.Error(), "RELAY_SCHEMA lists 2 outboxes ("+choices+"): choose one with --outbox") {
			t.Errorf("%v without --outbox: %v (exit %d), want exit 2 listing the outboxes", args, err, exitCode(err))
		}
	}
	if _, _, err := runCLI(t, env, "stuck", "list", "--outbox", "nope"); exitCode(err) != 2 ||
		!strings.Contains(err.Error(), "--outbox nope: not an outbox of RELAY_SCHEMA ("+choices+")") {
		t.Errorf("stuck list --outbox nope: %v (exit %d), want exit 2 listing the outboxes", err, exitCode(err))
	}

	out, _, err := runCLI(t, env, "stuck", "list", "--outbox", dbA.Schema)
	if err != nil || !strings.Contains(out, "MESSAGE_TOO_LARGE") {
		t.Fatalf("stuck list --outbox %s: %q, %v; want rows 10 and 20", dbA.Schema, out, err)
	}
	_, stderr, err := runCLI(t, env, "stuck", "list", "--outbox", dbB.Schema)
	if err != nil || !strings.Contains(stderr, "no stuck rows") {
		t.Fatalf("stuck list --outbox %s: %q, %v; want none", dbB.Schema, stderr, err)
	}
	if _, _, err := runCLI(t, env, "stuck", "requeue", "10", "--outbox", dbB.Schema); exitCode(err) != 2 {
		t.Errorf("requeue of a row of the other outbox: %v, want exit 2 (no such row)", err)
	}
	out, _, err = runCLI(t, env, "stuck", "requeue", "--outbox", dbA.Schema, "10")
	if err != nil || !strings.Contains(out, "requeued 1 row(s): 10") {
		t.Fatalf("stuck requeue --outbox %s 10: %q, %v", dbA.Schema, out, err)
	}
	if n := dbA.Count(t, "pending"); n != 2 {
		t.Errorf("%d pending rows in %s after the requeue, want 2 (row 10 and the row it held back)", n, dbA.Schema)
	}
}

// RELAY_SCHEMA is checked at start: every name valid, none twice, and no
// copy trigger with several outboxes; each is a usage error naming it.
func TestSchemaListConfig(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"RELAY_SCHEMA": "tenant_a,tenant_a"}, "RELAY_SCHEMA: tenant_a is listed twice"},
		{map[string]string{"RELAY_SCHEMA": "tenant_a, Tenant-B"}, `RELAY_SCHEMA: "Tenant-B" is not a valid schema name`},
		{map[string]string{"RELAY_SCHEMA": "tenant_a,,tenant_b"}, `RELAY_SCHEMA: "" is not a valid schema name`},
		{map[string]string{"RELAY_SCHEMA": "tenant_a,tenant_b", "RELAY_DEBEZIUM_TABLE": "public.outboxevent"},
			"RELAY_SCHEMA: lists 2 outboxes, but RELAY_DEBEZIUM_TABLE copies its inserts into one outbox"},
		{map[string]string{"RELAY_SCHEMA": "tenant_a,tenant_b", "RELAY_LAYOUT_TABLE": "public.events", "RELAY_LAYOUT_TOPIC": "t", "RELAY_LAYOUT_PAYLOAD": "body"},
			"RELAY_SCHEMA: lists 2 outboxes, but RELAY_LAYOUT_TABLE copies its inserts into one outbox"},
	} {
		_, err := loadConfig(mapEnv(c.env))
		if exitCode(err) != 2 || err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v (exit %d), want exit 2 with %q", c.env, err, exitCode(err), c.want)
		}
		// And "relay run" stops before it starts anything.
		if err := run(context.Background(), []string{"run"}, mapEnv(c.env), io.Discard, io.Discard); exitCode(err) != 2 {
			t.Errorf("relay run with %v: %v, want exit 2", c.env, err)
		}
	}
	cfg, err := loadConfig(mapEnv(map[string]string{"RELAY_SCHEMA": " tenant_a , tenant_b"}))
	if err != nil || strings.Join(cfg.Schemas, ",") != "tenant_a,tenant_b" {
		t.Errorf("RELAY_SCHEMA with spaces: %q, %v", cfg.Schemas, err)
	}
}

// An outbox whose tables the relay's database role may not read (a grant
// forgotten for a new tenant) is one broken outbox like an unmigrated one:
// the other delivers, and once the grants are given the broken one
// delivers without a restart.
func TestOutboxWithoutGrantsDoesNotStopTheOthers(t *testing.T) {
	t.Parallel()
	good, late := relaytest.NewDB(t), relaytest.NewDB(t)
	ctx := context.Background()
	role := "relay_grants_" + strings.TrimPrefix(good.Schema, "test_")
	grant := func(schema string) {
		t.Helper()
		s := pgx.Identifier{schema}.Sanitize()
		for _, g := range []string{
			"USAGE ON SCHEMA " + s,
			"SELECT, UPDATE, DELETE ON " + s + ".messages",
			"SELECT, INSERT ON " + s + ".stuck_messages",
			"SELECT, UPDATE ON SEQUENCE " + s + ".relay_idle_until",
			"SELECT ON " + s + ".goose_db_version",
		} {
			if _, err := good.Pool.Exec(ctx, "GRANT "+g+" TO "+role); err != nil {
				t.Fatalf("GRANT %s: %v", g, err)
			}
		}
	}
	if _, err := good.Pool.Exec(ctx, "CREATE ROLE "+role+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = good.Pool.Exec(context.Background(), "DROP OWNED BY "+role)
		_, _ = good.Pool.Exec(context.Background(), "DROP ROLE "+role)
	})
	grant(good.Schema) // and none on late's tables

	u, err := url.Parse(good.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	cluster := relaytest.NewCluster(t, 1, "good", "late")
	brokers := cluster.ListenAddrs()
	d := runDaemon(t, map[string]string{
		"RELAY_DATABASE_URL":     u.String(),
		"RELAY_SCHEMA":           good.Schema + "," + late.Schema,
		"RELAY_KAFKA_BROKERS":    brokers[0],
		"RELAY_MIGRATE_ON_START": "false",
	})

	rows := insertConcurrently(t, good.Pool, 2, 100, 10, func(w, i int) relaytest.Message {
		return relaytest.Message{Topic: "good", Key: fmt.Appendf(nil, "k%d", i%7), Payload: fmt.Appendf(nil, "%d/%d", w, i), Headers: map[string]string{}}
	})
	checkDelivery(t, rows, consumeIDs(t, brokers, rows, time.Minute, "good"), false)
	relaytest.WaitFor(t, 30*time.Second, "the outbox without grants to be logged, alerted and retried", func() bool {
		return d.logged("outbox_unavailable", map[string]string{"outbox": late.Schema, "attempt": "2"}) &&
			d.logged("alert", map[string]string{"alert_kind": "outbox_unavailable", "outbox": late.Schema})
	})
	wantBody := good.Schema + ": ok\n" + late.Schema + ": starting: migrations: the schema is not migrated or not readable\n"
	if code, body := d.get("/readyz"); code != http.StatusOK || body != wantBody {
		t.Errorf("/readyz with one outbox not readable: %d %q, want 200 %q", code, body, wantBody)
	}

	// The operator grants the role the tables; the running relay picks it up.
	id := late.Insert(t, relaytest.Message{Topic: "late", Key: []byte("k"), Payload: []byte("after the grant")})[0]
	grant(late.Schema)
	recs := relaytest.Consume(t, brokers, 1, 90*time.Second, "late")
	if got, _ := relaytest.OutboxID(recs[0]); got != id {
		t.Errorf("delivered outbox-id %d, want %d", got, id)
	}
}
