package relay_test

import (
	"context"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// sentOutbox is an outbox of n rows that r, a relay keeping sent rows for
// an hour, has sent.
func sentOutbox(t *testing.T, n int) (db *relaytest.DB, r *relay.Relay) {
	t.Helper()
	db = relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	msgs := make([]relaytest.Message, n)
	for i := range msgs {
		msgs[i] = relaytest.Message{Topic: "t", Payload: []byte("x")}
	}
	db.Insert(t, msgs...)
	r = relay.New(relay.Config{Schema: db.Schema, BatchSize: 5000, SentRetention: time.Hour}, db.Pool,
		relaytest.NewProducer(t, cluster.ListenAddrs()), testLogger(t))
	if got, err := r.DeliverBatch(context.Background(), nil); err != nil || got != n {
		t.Fatalf("batch: %d, %v", got, err)
	}
	return db, r
}

func TestPruneDeletesOnlySentRowsPastRetention(t *testing.T) {
	t.Parallel()
	db, r := sentOutbox(t, 2500)
	ctx := context.Background()
	pending := db.Insert(t, relaytest.Message{Topic: "t", Payload: []byte("not yet sent")})[0]
	// 2,100 of the sent rows are two hours old: more than two prune batches.
	if _, err := db.Pool.Exec(ctx, `UPDATE messages SET sent_at = now() - interval '2 hours'
		WHERE id IN (SELECT id FROM messages WHERE status = 'sent' ORDER BY id LIMIT 2100)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE messages SET created_at = now() - interval '3 hours' WHERE id = $1`, pending); err != nil {
		t.Fatal(err)
	}
	n, err := r.Prune(ctx, nil)
	if err != nil || n != 2100 {
		t.Fatalf("Prune = %d, %v; want the 2100 rows sent more than an hour ago", n, err)
	}
	if got := db.Count(t, "sent"); got != 400 {
		t.Errorf("%d sent rows left, want the 400 recent ones", got)
	}
	if st := state(t, db, pending); st.status != "pending" {
		t.Errorf("old pending row: %s, want kept", st.status)
	}
}

// Two relays prune the same outbox: each takes the rows the other is not
// deleting, rather than waiting for its transaction.
func TestPruneSkipsRowsAnotherPruneIsDeleting(t *testing.T) {
	t.Parallel()
	db, r := sentOutbox(t, 1500)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `UPDATE messages SET sent_at = now() - interval '2 hours'`); err != nil {
		t.Fatal(err)
	}
	// The other relay's prune, caught with the 500 oldest rows deleted
	// and its transaction open.
	other, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(ctx)
	if tag, err := other.Exec(ctx, `DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT 500)`); err != nil || tag.RowsAffected() != 500 {
		t.Fatalf("the other prune: %v, %v", tag, err)
	}

	// Waiting for the other transaction would run into this deadline.
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	n, err := r.Prune(pctx, nil)
	if err != nil || n != 1000 {
		t.Fatalf("Prune = %d, %v; want the 1000 rows the other prune does not hold, without waiting for it", n, err)
	}
	if err := other.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := db.Count(t, "sent"); got != 500 {
		t.Errorf("%d sent rows left, want the 500 the other prune held (it rolled back)", got)
	}
}

func TestDeleteOnSend(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	brokers := cluster.ListenAddrs()
	db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("a"), Payload: []byte("1")},
		relaytest.Message{Topic: "t", Key: []byte("b"), Payload: []byte("2")})
	r := relay.New(relay.Config{Schema: db.Schema, DeleteOnSend: true}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	if n, err := r.DeliverBatch(context.Background(), nil); err != nil || n != 2 {
		t.Fatalf("batch: %d, %v", n, err)
	}
	if left := db.Count(t, "pending") + db.Count(t, "sent"); left != 0 {
		t.Errorf("%d rows left after delete-on-send, want 0", left)
	}
	relaytest.Consume(t, brokers, 2, 10*time.Second, "t")
}
