package relay_test

import (
	"context"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/stuck"
)

// TestLongKeysAndTopicsAreAccepted checks that a key of 3 KB (random, so
// it does not compress) and a topic of 3,000 characters go into the outbox:
// no index of the relay limits their size. The long key is delivered, and
// its key's order is kept while its first row is stuck: the row behind it
// waits, is counted behind the stuck row, and follows it once requeued.
// The long topic, which Kafka refuses, is escalated alone with the reason.
func TestLongKeysAndTopicsAreAccepted(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 1, "t").ListenAddrs()
	ctx := context.Background()

	key := make([]byte, 3<<10)
	_, _ = rand.Read(key)
	longTopic := strings.Repeat("x", 3000)
	ids := db.Insert(t,
		relaytest.Message{Topic: "t", Key: key, Payload: []byte("first")},
		relaytest.Message{Topic: longTopic, Key: key, Payload: []byte("bad topic")},
		relaytest.Message{Topic: "t", Key: key, Payload: []byte("second")})

	// The first row of the key is stuck (escalated by SQL, as the relay
	// would): the row behind it waits.
	if _, err := db.Pool.Exec(ctx, `
WITH moved AS (DELETE FROM messages WHERE id = $1 RETURNING id, topic, key, payload, headers, created_at)
INSERT INTO stuck_messages (id, topic, key, payload, headers, created_at, attempts, last_error, error_kind)
SELECT id, topic, key, payload, headers, created_at, 1, 'test', 'row_fatal' FROM moved`, ids[0]); err != nil {
		t.Fatal(err)
	}
	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 1 {
		t.Fatalf("first batch: %d rows, %v; want the long topic's row alone", n, err)
	}
	bad, err := stuck.Get(ctx, db.Pool, ids[1])
	if err != nil || !strings.Contains(bad.LastError, "249") {
		t.Fatalf("long topic: %+v, %v; want it stuck, with Kafka's limit as the reason", bad, err)
	}
	if st := state(t, db, ids[2]); st.status != "pending" || st.attempts != 0 {
		t.Fatalf("row %d is %+v; want it pending behind the stuck row of its key", ids[2], st)
	}
	head, err := stuck.Get(ctx, db.Pool, ids[0])
	if err != nil || head.Blocking != 1 {
		t.Fatalf("stuck row %d: %+v, %v; want it to hold back 1 row", ids[0], head, err)
	}
	var blocked int64
	if err := db.Pool.QueryRow(ctx, `SELECT id FROM blocked_messages WHERE blocked_by_stuck_id = $1`, ids[0]).Scan(&blocked); err != nil || blocked != ids[2] {
		t.Fatalf("blocked_messages: %d, %v; want row %d", blocked, err, ids[2])
	}

	if moved, err := stuck.Requeue(ctx, db.Pool, []int64{ids[0]}, ""); err != nil || len(moved) != 1 {
		t.Fatalf("requeue: %v, %v", moved, err)
	}
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 2 {
		t.Fatalf("after the requeue: %d rows, %v; want both rows of the key", n, err)
	}
	records := relaytest.Consume(t, brokers, 2, 10*time.Second, "t")
	if a, b := outboxID(t, records[0]), outboxID(t, records[1]); a != ids[0] || b != ids[2] {
		t.Fatalf("delivered %d, %d; want %d, %d", a, b, ids[0], ids[2])
	}
	if len(records[0].Key) != len(key) {
		t.Errorf("key of %d bytes delivered as %d", len(key), len(records[0].Key))
	}
}
