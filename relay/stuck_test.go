package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/retry"
	"github.com/outboxrelay/relay/stuck"
)

// recordingAlerter keeps every alert and signals each one on a channel.
type recordingAlerter struct {
	mu     sync.Mutex
	alerts []alert.Alert
	raised chan alert.Alert
}

func newRecordingAlerter() *recordingAlerter {
	return &recordingAlerter{raised: make(chan alert.Alert, 1000)}
}

func (a *recordingAlerter) Raise(_ context.Context, al alert.Alert) {
	a.mu.Lock()
	a.alerts = append(a.alerts, al)
	a.mu.Unlock()
	a.raised <- al
}

func (a *recordingAlerter) count(kind alert.Kind) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, al := range a.alerts {
		if al.Kind == kind {
			n++
		}
	}
	return n
}

// poisonBatch inserts 1,000 good rows with one 2 MiB payload among them and
// a later row of the poison row's key, and returns the two special ids.
func poisonBatch(t *testing.T, db *relaytest.DB) (poison, behind int64) {
	var msgs []relaytest.Message
	for i := 0; i < 1000; i++ {
		msgs = append(msgs, relaytest.Message{Topic: "t", Key: []byte(fmt.Sprintf("k%d", i)), Payload: []byte("ok")})
	}
	msgs[500] = relaytest.Message{Topic: "t", Key: []byte("poison"), Payload: bytes.Repeat([]byte("x"), 2<<20)}
	ids := db.Insert(t, msgs...)
	behind = db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("poison"), Payload: []byte("after")})[0]
	return ids[500], behind
}

func TestPoisonRowIsEscalatedWithinOneBatch(t *testing.T) {
	t.Parallel()
	for _, strict := range []bool{true, false} {
		t.Run(fmt.Sprintf("strict=%v", strict), func(t *testing.T) {
			t.Parallel()
			db := relaytest.NewDB(t)
			cluster := relaytest.NewCluster(t, 3, "t")
			brokers := cluster.ListenAddrs()
			ctx := context.Background()
			poison, behind := poisonBatch(t, db)

			alerts := newRecordingAlerter()
			cfg := relay.Config{Schema: db.Schema, BatchSize: 1000, DisableStuckBlocksKey: !strict, Alerter: alerts}
			r := relay.New(cfg, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
			if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 1000 {
				t.Fatalf("first batch: %d rows, %v; want 1000", n, err)
			}
			stuck := stuckRow(t, db, poison)
			if stuck.kind != "row_fatal" || stuck.attempts != 1 || !strings.Contains(stuck.lastError, "max.message.bytes") {
				t.Errorf("poison row: %+v; want escalated at once as row_fatal, over max.message.bytes", stuck)
			}
			if got := db.Count(t, "sent"); got != 999 {
				t.Errorf("%d rows sent after the first batch, want the 999 good ones", got)
			}
			if a := <-alerts.raised; a.Kind != alert.KindEscalated || a.Topic != "t" || a.Count != 1 {
				t.Errorf("alert %+v; want one rows_escalated alert for topic t", a)
			}

			n, err := r.DeliverBatch(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if strict {
				if n != 0 || state(t, db, behind).status != "pending" {
					t.Errorf("strict: the row behind the stuck row was claimed (%d rows); want it held", n)
				}
				var blockedBy int64
				if err := db.Pool.QueryRow(ctx, `SELECT blocked_by_stuck_id FROM blocked_messages WHERE id = $1`, behind).Scan(&blockedBy); err != nil || blockedBy != poison {
					t.Errorf("blocked_messages says row %d is blocked by %d (%v), want %d", behind, blockedBy, err, poison)
				}
			} else if n != 1 || state(t, db, behind).status != "sent" {
				t.Errorf("non-strict: %d rows in the second batch; want the row behind the stuck row sent", n)
			}
			relaytest.Consume(t, brokers, 999, 10*time.Second, "t")
		})
	}
}

func TestRequeueDeliversStuckRowBeforeTheRowsItBlocked(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()

	// A row that the broker refuses at first (an invalid header value).
	var stuckID int64
	if err := db.Pool.QueryRow(ctx,
		`INSERT INTO messages (topic, key, payload, headers) VALUES ('t', 'k', 'first', '{"v": 2}') RETURNING id`).Scan(&stuckID); err != nil {
		t.Fatal(err)
	}
	later := db.Insert(t,
		relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("second")},
		relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("third")},
	)
	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	if _, err := r.DeliverBatch(ctx, nil); err != nil {
		t.Fatal(err)
	}
	rows, err := stuck.List(ctx, db.Pool, stuck.Filter{Topic: "t"})
	if err != nil || len(rows) != 1 || rows[0].ID != stuckID || rows[0].Blocking != 2 {
		t.Fatalf("stuck.List = %+v, %v; want row %d blocking 2 rows", rows, err, stuckID)
	}

	// The operator fixes the row in place and requeues it.
	if _, err := db.Pool.Exec(ctx, `UPDATE stuck_messages SET headers = '{"v": "2"}' WHERE id = $1`, stuckID); err != nil {
		t.Fatal(err)
	}
	moved, err := stuck.Requeue(ctx, db.Pool, []int64{stuckID}, "")
	if err != nil || len(moved) != 1 || moved[0] != stuckID {
		t.Fatalf("Requeue = %v, %v; want [%d]", moved, err, stuckID)
	}
	if st := state(t, db, stuckID); st.status != "pending" || st.attempts != 0 {
		t.Fatalf("requeued row: %+v; want pending with attempts reset, same id", st)
	}
	// One batch takes the key's three rows and produces them in three waves.
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 3 {
		t.Fatalf("batch after requeue: %d rows, %v; want 3", n, err)
	}
	if got := db.Count(t, "sent"); got != 3 {
		t.Fatalf("%d rows sent, want 3", got)
	}
	records := relaytest.Consume(t, brokers, 3, 10*time.Second, "t")
	want := []int64{stuckID, later[0], later[1]}
	for i, rec := range records {
		if id := outboxID(t, rec); id != want[i] {
			t.Fatalf("record %d is row %d, want order %v", i, id, want)
		}
	}
}

// A requeue that commits while a claim runs, after the claim locked a later
// row of the requeued row's key and before it asked what holds that row
// back: the lock did not see the requeued row (it was still stuck), the
// held-rows query sees it pending, and the later row waits for it. (Within
// the held-rows query, one snapshot sees the row either stuck or pending,
// so no other moment can lose it.)
func TestRequeueDuringAClaimKeepsTheKeyOrder(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()

	// A stuck row of key k: escalated as the relay would, by SQL.
	stuckID := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("first")})[0]
	if _, err := db.Pool.Exec(ctx, `
WITH moved AS (DELETE FROM messages WHERE id = $1 RETURNING id, topic, key, payload, headers, created_at)
INSERT INTO stuck_messages (id, topic, key, payload, headers, created_at, attempts, last_error, error_kind)
SELECT id, topic, key, payload, headers, created_at, 1, 'test', 'row_fatal' FROM moved`, stuckID); err != nil {
		t.Fatal(err)
	}
	later := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("second")})[0]

	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	requeued := false
	r.SetAfterLock(func() {
		if requeued {
			return
		}
		requeued = true
		if moved, err := stuck.Requeue(ctx, db.Pool, []int64{stuckID}, ""); err != nil || len(moved) != 1 {
			t.Errorf("requeue during the claim: %v, %v", moved, err)
		}
	})
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 0 {
		t.Fatalf("claim during the requeue: %d rows, %v; want 0 (row %d waits for row %d)", n, err, later, stuckID)
	}
	if !requeued {
		t.Fatal("the claim locked nothing: the requeue never ran")
	}
	if st := state(t, db, later); st.status != "pending" {
		t.Fatalf("row %d is %s, want pending behind the requeued row", later, st.status)
	}
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 2 {
		t.Fatalf("next claim: %d rows, %v; want both rows of the key", n, err)
	}
	records := relaytest.Consume(t, brokers, 2, 10*time.Second, "t")
	if got := []int64{outboxID(t, records[0]), outboxID(t, records[1])}; got[0] != stuckID || got[1] != later {
		t.Fatalf("delivered %v, want [%d %d]", got, stuckID, later)
	}
}

func TestBrokerOutageEscalatesNothingAndLosesNothing(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	dataDir := t.TempDir()
	start := func(port int) *kfake.Cluster {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dataDir), kfake.SeedTopics(2, "t"))
		if err != nil {
			t.Fatalf("kfake: %v", err)
		}
		return c
	}
	cluster := start(0)
	brokers := cluster.ListenAddrs()
	var port int
	if _, err := fmt.Sscanf(brokers[0][strings.LastIndex(brokers[0], ":")+1:], "%d", &port); err != nil {
		t.Fatal(err)
	}

	alerts := newRecordingAlerter()
	cfg := relay.Config{
		Schema:       db.Schema,
		MaxAttempts:  2, // a tiny retry budget the outage outlasts many times
		Retry:        retry.Policy{Base: 5 * time.Millisecond, Max: 20 * time.Millisecond},
		PollInterval: 10 * time.Millisecond,
		// Long enough that no batch before the outage, however slow
		// under -race on a loaded machine, waits this long for Kafka's
		// first answer: that would raise an outage alert of its own.
		OutageAlertAfter: time.Second,
		Alerter:          alerts,
		ProduceTimeout:   time.Second,
	}
	r := relay.New(cfg, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	insert := func(from, n int) {
		for i := from; i < from+n; i++ {
			db.Insert(t, relaytest.Message{Topic: "t", Key: []byte(fmt.Sprintf("k%d", i%7)), Payload: []byte(fmt.Sprint(i))})
		}
	}
	insert(0, 50)
	relaytest.WaitFor(t, 20*time.Second, "the first rows sent", func() bool { return db.Count(t, "sent") == 50 })

	cluster.Close() // the outage
	insert(50, 50)
	select {
	case a := <-alerts.raised:
		if a.Kind != alert.KindOutage {
			t.Fatalf("first alert during the outage is %+v, want kafka_outage", a)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no outage alert within 30s")
	}
	if err := r.KafkaHealthy(); err == nil {
		t.Error("KafkaHealthy() = nil during the outage")
	}
	var stuck, spent int
	if err := db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM stuck_messages), (SELECT count(*) FROM messages WHERE attempts > 0)`).Scan(&stuck, &spent); err != nil {
		t.Fatal(err)
	}
	if stuck != 0 || spent != 0 {
		t.Fatalf("during the outage: %d rows escalated, %d rows spent attempts; want 0 and 0", stuck, spent)
	}

	cluster = start(port) // Kafka returns, with its log
	defer cluster.Close()
	relaytest.WaitFor(t, 60*time.Second, "every row sent after the outage", func() bool { return db.Count(t, "sent") == 100 })
	if err := r.KafkaHealthy(); err != nil {
		t.Errorf("KafkaHealthy() after recovery: %v", err)
	}
	records := relaytest.Consume(t, brokers, 100, 20*time.Second, "t")
	if dups := checkFirstDeliveryOrder(t, records); len(records)-dups != 100 {
		t.Errorf("%d distinct rows in Kafka, want 100", len(records)-dups)
	}
	if n := alerts.count(alert.KindOutage); n != 1 {
		t.Errorf("%d outage alerts, want 1", n)
	}
	if n := alerts.count(alert.KindEscalated); n != 0 {
		t.Errorf("%d escalation alerts, want 0", n)
	}
}

func TestLagAlertWhenOldestPendingRowIsTooOld(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	ctx := context.Background()
	id := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("p")})[0]
	// The row waits for a retry far in the future and is already an hour old.
	if _, err := db.Pool.Exec(ctx, `UPDATE messages SET created_at = now() - interval '1 hour', next_attempt_at = now() + interval '1 hour' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	alerts := newRecordingAlerter()
	runRelay(t, db, cluster.ListenAddrs(), relay.Config{LagAlertAfter: 50 * time.Millisecond, Alerter: alerts})
	select {
	case a := <-alerts.raised:
		if a.Kind != alert.KindLag || !strings.Contains(a.Message, "1h0m0s") {
			t.Errorf("alert %+v; want a delivery_lag alert naming the hour", a)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no lag alert within 20s")
	}
}
