package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/relay/relaytest"
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
	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := r.Run(ctx); err != nil {
			t.Errorf("relay: %v", err)
		}
	})
	relaytest.WaitFor(t, 30*time.Second, "every row sent", func() bool { return db.Count(t, "pending") == 0 })
	cancel()
	wg.Wait()
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

	for _, args := range [][]string{{"verify", "--since", "yesterday"}, {"verify", "extra"}, {"verify", "--chunk-size", "0"}} {
		if _, _, err := runCLI(t, env, args...); exitCode(err) != 2 {
			t.Errorf("relay %v: %v, want exit 2", args, err)
		}
	}
}
