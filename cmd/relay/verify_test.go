package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
)

func TestVerifyCommand(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "orders", "users")
	brokers := cluster.ListenAddrs()
	var msgs []relaytest.Message
	for _, topic := range []string{"orders", "users"} {
		for i := range 10 {
			msgs = append(msgs, relaytest.Message{Topic: topic, Key: []byte("k" + strconv.Itoa(i%3)), Payload: []byte("p" + strconv.Itoa(i))})
		}
	}
	relaytest.Deliver(t, db, brokers, msgs...)
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
	relaytest.DeleteRecords(t, brokers, "orders", 0, 4)
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
