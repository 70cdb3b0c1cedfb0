package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// keyOrder returns the outbox ids of recs per key, in the order read.
func keyOrder(t *testing.T, recs []*kgo.Record) map[string][]int64 {
	t.Helper()
	out := map[string][]int64{}
	for _, r := range recs {
		id, err := relaytest.OutboxID(r)
		if err != nil {
			t.Fatal(err)
		}
		out[string(r.Key)] = append(out[string(r.Key)], id)
	}
	return out
}

// After a topic is lost (deleted and recreated), relay verify --json finds
// its rows missing; relay resend --from-verify makes the relay publish them
// again, with the same outbox-id and in key order; --ids resends one row.
func TestResendFromVerify(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 2, "orders")
	brokers := cluster.ListenAddrs()
	startRelay := func() (stop func()) {
		return relaytest.RunRelay(t, relay.New(relay.Config{Schema: db.Schema, PollInterval: 50 * time.Millisecond}, db.Pool,
			relaytest.NewProducer(t, brokers), slog.New(slog.DiscardHandler)))
	}
	stop := startRelay()

	var msgs []relaytest.Message
	for i := range 6 {
		msgs = append(msgs, relaytest.Message{Topic: "orders", Key: []byte([]string{"k1", "k2"}[i%2]), Payload: []byte{byte('a' + i)}})
	}
	ids := db.Insert(t, msgs...)
	relaytest.WaitFor(t, 30*time.Second, "6 rows sent", func() bool { return db.Count(t, "sent") == 6 })

	// Lose the topic. The relay is restarted around it: its Kafka client
	// keeps the deleted topic's id and gets UNKNOWN_TOPIC_ID from the
	// recreated one (seen with kfake; not what this test is about).
	stop()
	adm := kadm.NewClient(relaytest.NewProducer(t, brokers))
	ctx := context.Background()
	if _, err := adm.DeleteTopics(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	if _, err := adm.CreateTopic(ctx, 2, 1, nil, "orders"); err != nil {
		t.Fatal(err)
	}

	startRelay()

	env := map[string]string{"RELAY_DATABASE_URL": db.URL, "RELAY_SCHEMA": db.Schema, "RELAY_KAFKA_BROKERS": brokers[0], "USER": "carol"}
	report, _, err := runCLI(t, env, "verify", "--json")
	if exitCode(err) != 1 {
		t.Fatalf("verify after losing the topic: %v (exit %d), want exit 1\n%s", err, exitCode(err), report)
	}
	var rep verifyJSON
	if err := json.Unmarshal([]byte(report), &rep); err != nil || rep.Total.Missing != 6 {
		t.Fatalf("verify --json: %v, %+v; want 6 missing rows", err, rep.Total)
	}
	file := filepath.Join(t.TempDir(), "verify.json")
	if err := os.WriteFile(file, []byte(report), 0o600); err != nil {
		t.Fatal(err)
	}

	if _, _, err := runCLI(t, env, "resend", "--from-verify", file); exitCode(err) != 2 || !strings.Contains(err.Error(), "publish 6 sent row(s) again (orders: 6); add --yes") {
		t.Fatalf("resend without --yes: %v (exit %d); want a request for --yes", err, exitCode(err))
	}
	stdout, _, err := runCLI(t, env, "resend", "--from-verify", file, "--yes")
	if err != nil || !strings.Contains(stdout, "resent 6 row(s)") {
		t.Fatalf("resend --from-verify: %v %q", err, stdout)
	}
	recs := relaytest.Consume(t, brokers, 6, 30*time.Second, "orders")
	got := keyOrder(t, recs)
	if want := []int64{ids[0], ids[2], ids[4]}; !slices.Equal(got["k1"], want) {
		t.Errorf("key k1 re-delivered as %v, want %v (same outbox-ids, in id order)", got["k1"], want)
	}
	if want := []int64{ids[1], ids[3], ids[5]}; !slices.Equal(got["k2"], want) {
		t.Errorf("key k2 re-delivered as %v, want %v", got["k2"], want)
	}
	relaytest.WaitFor(t, 30*time.Second, "the resent rows marked sent again", func() bool { return db.Count(t, "sent") == 6 })

	// Now verify is clean; resend one row by id, and refuse an unknown one.
	if _, _, err := runCLI(t, env, "verify"); err != nil {
		t.Errorf("verify after the resend: %v", err)
	}
	if _, _, err := runCLI(t, env, "resend", "--ids", "999999", "--yes"); exitCode(err) != 2 || !strings.Contains(err.Error(), "no sent row 999999") {
		t.Errorf("resend of an unknown id: %v (exit %d), want exit 2", err, exitCode(err))
	}
	one := strconv.FormatInt(ids[3], 10)
	if stdout, _, err := runCLI(t, env, "resend", "--ids", one, "--yes"); err != nil || !strings.Contains(stdout, "resent 1 row(s): "+one) {
		t.Fatalf("resend --ids %s: %v %q", one, err, stdout)
	}
	recs = relaytest.Consume(t, brokers, 7, 30*time.Second, "orders")
	if got := keyOrder(t, recs)["k2"]; len(got) != 4 || got[3] != ids[3] {
		t.Errorf("key k2 after resending %d: %v, want it once more at the end", ids[3], got)
	}

	var entries []string
	rows, err := db.Pool.Query(ctx, `SELECT operator || ' ' || action || ' ' || array_length(row_ids, 1) FROM audit_log ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	entries, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(entries) != 2 || !strings.HasSuffix(entries[0], "(carol) resend 6") || !strings.HasSuffix(entries[1], "(carol) resend 1") {
		t.Errorf("audit_log: %q, %v; want two resends by carol, of 6 rows and of 1", entries, err)
	}
}
