package relay_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/retry"
)

type stuckState struct {
	kind       string
	attempts   int
	firstError string
	lastError  string
}

// stuckRow reads a row from stuck_messages or fails the test.
func stuckRow(t *testing.T, db *relaytest.DB, id int64) stuckState {
	t.Helper()
	var s stuckState
	var first *string
	err := db.Pool.QueryRow(context.Background(),
		`SELECT error_kind, attempts, first_error, last_error FROM stuck_messages WHERE id = $1`, id).
		Scan(&s.kind, &s.attempts, &first, &s.lastError)
	if err != nil {
		t.Fatalf("stuck row %d: %v", id, err)
	}
	if first != nil {
		s.firstError = *first
	}
	return s
}

type deliveryState struct {
	status    string
	attempts  int
	lastError string
	nextAt    time.Time
}

func state(t *testing.T, db *relaytest.DB, id int64) deliveryState {
	t.Helper()
	var s deliveryState
	var lastErr *string
	err := db.Pool.QueryRow(context.Background(),
		`SELECT status, attempts, last_error, next_attempt_at FROM messages WHERE id = $1`, id).
		Scan(&s.status, &s.attempts, &lastErr, &s.nextAt)
	if err != nil {
		t.Fatalf("state of %d: %v", id, err)
	}
	if lastErr != nil {
		s.lastError = *lastErr
	}
	return s
}

func TestRetriableFailureLeavesRowPendingAndHoldsItsKey(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 2, "good", "bad")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()

	// UNKNOWN_SERVER_ERROR is an error the relay does not know: the row
	// of "good" in the same batch goes through, so this is a row failure,
	// not an outage. (A partition's own retriable errors, such as
	// NOT_ENOUGH_REPLICAS, are an outage of the partition: see
	// TestPartitionOutageSpendsNoAttempts.)
	fault := cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "bad", Err: kerr.UnknownServerError, Count: -1})
	ids := db.Insert(t,
		relaytest.Message{Topic: "bad", Key: []byte("k"), Payload: []byte("1")},
		relaytest.Message{Topic: "bad", Key: []byte("k"), Payload: []byte("2")},
		relaytest.Message{Topic: "good", Key: []byte("k"), Payload: []byte("3")},
	)
	policy := retry.Policy{Base: time.Minute, Max: time.Minute, Int64N: func(n int64) int64 { return n - 1 }}
	producer := relaytest.NewProducer(t, brokers)
	r := relay.New(relay.Config{Schema: db.Schema, Retry: policy, ProduceTimeout: time.Second}, db.Pool, producer, testLogger(t))

	now := time.Now().Truncate(time.Microsecond)
	// The batch claims all three rows; bad/k's second row waits for the
	// second wave, which it never reaches: the first row of its key failed.
	if n, err := r.DeliverBatch(ctx, &now); err != nil || n != 3 {
		t.Fatalf("first batch: %d rows, %v; want 3 (bad/k's chain of 2 and good/k)", n, err)
	}
	failed := state(t, db, ids[0])
	if failed.status != "pending" || failed.attempts != 1 || failed.lastError == "" {
		t.Fatalf("failed row: %+v; want pending, 1 attempt, its error recorded", failed)
	}
	if want := now.Add(time.Minute); !failed.nextAt.Equal(want) {
		t.Errorf("next attempt at %v, want %v (now + backoff)", failed.nextAt, want)
	}
	if st := state(t, db, ids[1]); st.status != "pending" || st.attempts != 0 {
		t.Errorf("row behind the failed row: %+v; want pending with no attempt spent", st)
	}
	if st := state(t, db, ids[2]); st.status != "sent" {
		t.Errorf("row of another topic: %s, want sent", st.status)
	}

	// Before its next attempt the failed row is not due, and it still holds
	// back the later row of its key.
	if n, err := r.DeliverBatch(ctx, &now); err != nil || n != 0 {
		t.Fatalf("batch before the retry is due: %d rows, %v; want 0", n, err)
	}

	fault.Remove()
	later := now.Add(2 * time.Minute)
	if n, err := r.DeliverBatch(ctx, &later); err != nil || n != 2 {
		t.Fatalf("batch after the fault cleared: %d rows, %v; want 2", n, err)
	}
	for _, id := range ids[:2] {
		if st := state(t, db, id); st.status != "sent" {
			t.Errorf("row %d of bad/k after the fault cleared: %s, want sent", id, st.status)
		}
	}
	records := relaytest.Consume(t, brokers, 2, 10*time.Second, "bad")
	if a, b := outboxID(t, records[0]), outboxID(t, records[1]); a != ids[0] || b != ids[1] {
		t.Errorf("bad/k delivered as [%d %d], want [%d %d]", a, b, ids[0], ids[1])
	}
}

func TestMalformedHeadersAreEscalatedAlone(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	ctx := context.Background()

	var bad int64
	if err := db.Pool.QueryRow(ctx,
		`INSERT INTO messages (topic, key, payload, headers) VALUES ('t', 'a', 'x', '{"n": 1}') RETURNING id`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	good := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("b"), Payload: []byte("y")})[0]

	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, cluster.ListenAddrs()), testLogger(t))
	if _, err := r.DeliverBatch(ctx, nil); err != nil {
		t.Fatal(err)
	}
	stuck := stuckRow(t, db, bad)
	if stuck.kind != "row_fatal" || stuck.attempts != 1 || !strings.Contains(stuck.lastError, `header "n" must be a JSON string, got a number`) {
		t.Errorf("row with a numeric header: %+v; want escalated at once as row_fatal with a reason naming the header", stuck)
	}
	if st := state(t, db, good); st.status != "sent" {
		t.Errorf("good row: %s, want sent", st.status)
	}
}

func TestShutdownReleasesABatchKafkaNeverAnswers(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	// A "broker" that accepts connections and never answers: the produce
	// can neither succeed nor fail, so only the shutdown timeout ends it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	id := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("v")})[0]

	const timeout = 300 * time.Millisecond
	cfg := relay.Config{Schema: db.Schema, ShutdownTimeout: timeout}
	r := relay.New(cfg, db.Pool, relaytest.NewProducer(t, []string{ln.Addr().String()}), testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	// Wait until the relay holds the row (it is locked by the batch).
	relaytest.WaitFor(t, 10*time.Second, "the relay to claim the row", func() bool {
		var locked bool
		err := db.Pool.QueryRow(context.Background(),
			`SELECT NOT EXISTS (SELECT 1 FROM messages WHERE id = $1 FOR UPDATE SKIP LOCKED)`, id).Scan(&locked)
		return err == nil && locked
	})
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(timeout + 5*time.Second):
		t.Fatalf("Run did not return within the shutdown timeout (%v) plus 5s", timeout)
	}
	t.Logf("Run returned %v after cancel", time.Since(start))
	if st := state(t, db, id); st.status != "pending" || st.attempts != 0 {
		t.Errorf("row after an unanswered batch: %+v; want pending with no attempt spent", st)
	}
	var free bool
	if err := db.Pool.QueryRow(context.Background(),
		`SELECT EXISTS (SELECT 1 FROM messages WHERE id = $1 FOR UPDATE NOWAIT)`, id).Scan(&free); err != nil || !free {
		t.Errorf("row still locked after shutdown: %v", err)
	}
}

// A topic the cluster does not have is the rows' problem, not an outage, even
// when it is all the batch holds: they spend attempts and are escalated with
// a reason that names the topic, rather than waiting for ever while the relay
// reports Kafka down.
func TestMissingTopicIsARowFailureNotAnOutage(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	ctx := context.Background()
	id := db.Insert(t, relaytest.Message{Topic: "nope", Key: []byte("k"), Payload: []byte("x")})[0]
	policy := retry.Policy{Base: time.Minute, Max: time.Minute, Int64N: func(n int64) int64 { return n - 1 }}
	r := relay.New(relay.Config{Schema: db.Schema, Retry: policy, MaxAttempts: 2, Alerter: newRecordingAlerter()}, db.Pool,
		relaytest.NewProducer(t, cluster.ListenAddrs()), testLogger(t))

	now := time.Now().Truncate(time.Microsecond)
	if n, err := r.DeliverBatch(ctx, &now); err != nil || n != 1 {
		t.Fatalf("first batch: %d rows, %v; want 1 row and no outage", n, err)
	}
	st := state(t, db, id)
	if st.status != "pending" || st.attempts != 1 || !strings.Contains(st.lastError, "topic nope: create it") {
		t.Fatalf("row of a missing topic: %+v; want pending, 1 attempt, an error naming the topic", st)
	}
	later := now.Add(2 * time.Minute)
	if _, err := r.DeliverBatch(ctx, &later); err != nil {
		t.Fatal(err)
	}
	if s := stuckRow(t, db, id); s.kind != "row_retriable" || !strings.Contains(s.lastError, "does not exist") {
		t.Errorf("after %d attempts: %+v; want escalated with the reason", 2, s)
	}
}
