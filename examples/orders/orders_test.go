package orders

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// runningConsumer is a consumer running in the background.
type runningConsumer struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error // what Run returned, once done is closed
}

// startConsumer runs a consumer of group, with apply as its business logic
// when not nil, until it is stopped or fails. Its client is closed when Run
// returns, as the example's main does, so it leaves the group.
func startConsumer(t *testing.T, db *relaytest.DB, brokers []string, group string, apply func(context.Context, pgx.Tx, Event) error) *runningConsumer {
	t.Helper()
	client, err := kgo.NewClient(append(ConsumerClientOpts(group), kgo.SeedBrokers(brokers...))...)
	if err != nil {
		t.Fatal(err)
	}
	c := NewConsumer(client, db.Pool, testLogger())
	if apply != nil {
		c.apply = apply
	}
	if err := c.CreateTables(context.Background()); err != nil {
		client.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rc := &runningConsumer{cancel: cancel, done: make(chan struct{})}
	go func() {
		rc.err = c.Run(ctx)
		client.Close()
		close(rc.done)
	}()
	t.Cleanup(func() { _ = rc.stop(t) })
	return rc
}

// wait waits for Run to return and returns its error.
func (rc *runningConsumer) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-rc.done:
		return rc.err
	case <-time.After(60 * time.Second):
		t.Fatal("the consumer did not stop within 60s")
		return nil
	}
}

func (rc *runningConsumer) stop(t *testing.T) error {
	t.Helper()
	rc.cancel()
	return rc.wait(t)
}

// committed returns the group's committed offset of each partition of Topic.
func committed(t *testing.T, brokers []string, group string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	offs, err := kadm.NewClient(cl).FetchOffsets(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int32]int64{}
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Topic == Topic {
			out[o.Partition] = o.At
		}
	})
	return out
}

// endOffsets returns the end offset of each partition of Topic.
func endOffsets(t *testing.T, brokers []string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, Topic)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

func equalOffsets(a, b map[int32]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for p, o := range a {
		if b[p] != o {
			return false
		}
	}
	return true
}

type view struct {
	status string
	events int
}

func orderView(t *testing.T, db *relaytest.DB) map[int64]view {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT order_id, status, events FROM order_view`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]view{}
	for rows.Next() {
		var id int64
		var v view
		if err := rows.Scan(&id, &v.status, &v.events); err != nil {
			t.Fatal(err)
		}
		out[id] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// The service writes orders and their outbox rows, the relay delivers them,
// the consumer applies each event once, drops records delivered again, and
// has committed every offset when it stops.
func TestOrdersThroughTheRelay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 3, Topic)
	brokers := cluster.ListenAddrs()
	relaytest.RunRelay(t, relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), testLogger()))

	svc := NewService(db.Pool, db.Schema)
	if err := svc.CreateTables(ctx); err != nil {
		t.Fatal(err)
	}
	const placed, paid = 20, 12
	var ids []int64
	for i := range placed {
		id, err := svc.PlaceOrder(ctx, "customer-"+strconv.Itoa(i), int64(100*(i+1)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for _, id := range ids[:paid] {
		if err := svc.PayOrder(ctx, id); err != nil {
			t.Fatal(err)
		}
	}

	const group = "orders-e2e"
	rc := startConsumer(t, db, brokers, group, nil)
	relaytest.WaitFor(t, 60*time.Second, "the consumer to apply every event", func() bool {
		n := 0
		for _, v := range orderView(t, db) {
			n += v.events
		}
		return n == placed+paid
	})
	check := func() {
		t.Helper()
		got := orderView(t, db)
		for i, id := range ids {
			want := view{"placed", 1}
			if i < paid {
				want = view{"paid", 2}
			}
			if got[id] != want {
				t.Errorf("order %d: %+v, want %+v", id, got[id], want)
			}
		}
		if len(got) != placed {
			t.Errorf("%d orders in the view, want %d", len(got), placed)
		}
	}
	check()

	// At-least-once: the same records again, as after a relay restart.
	recs := relaytest.Consume(t, brokers, placed+paid, 30*time.Second, Topic)
	for _, r := range recs {
		if _, ok := DedupID(r); !ok {
			t.Fatalf("record %d/%d has no dedup id (headers %v)", r.Partition, r.Offset, r.Headers)
		}
	}
	prod := relaytest.NewProducer(t, brokers)
	for _, r := range recs {
		again := &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value, Headers: r.Headers}
		if err := prod.ProduceSync(ctx, again).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	ends := endOffsets(t, brokers)
	relaytest.WaitFor(t, 60*time.Second, "the consumer to commit the duplicates", func() bool {
		return equalOffsets(committed(t, brokers, group), ends)
	})
	check()
	var dropped int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM processed_events`).Scan(&dropped); err != nil {
		t.Fatal(err)
	}
	if dropped != placed+paid {
		t.Errorf("%d dedup ids recorded, want %d", dropped, placed+paid)
	}
	if err := rc.stop(t); err != nil {
		t.Errorf("consumer Run: %v", err)
	}
}

// produceEvents writes n order events for orders 1..n to a one-partition
// topic, with outbox-id headers as the relay writes them.
func produceEvents(t *testing.T, brokers []string, n int) {
	t.Helper()
	prod := relaytest.NewProducer(t, brokers)
	for i := 1; i <= n; i++ {
		id := strconv.Itoa(i)
		r := &kgo.Record{Topic: Topic, Key: []byte(id), Value: []byte(`{"order_id":` + id + `,"status":"placed","total_cents":100}`),
			Headers: []kgo.RecordHeader{{Key: "outbox-id", Value: []byte(id)}}}
		if err := prod.ProduceSync(context.Background(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

// A record that fails stops the consumer with the offsets of the records
// before it committed, and only those: the next consumer starts at the
// failed record, so nothing is skipped.
func TestConsumerCommitsProcessedRecordsOnError(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, Topic)
	brokers := cluster.ListenAddrs()
	const n, bad = 10, 6
	produceEvents(t, brokers, n)

	const group = "orders-error"
	errBad := errors.New("order 6 cannot be applied")
	failing := startConsumer(t, db, brokers, group, func(ctx context.Context, tx pgx.Tx, e Event) error {
		if e.OrderID == bad {
			return errBad
		}
		return applyEvent(ctx, tx, e)
	})
	if err := failing.wait(t); !errors.Is(err, errBad) {
		t.Fatalf("Run returned %v, want the failure of order %d", err, bad)
	}
	if got := committed(t, brokers, group); got[0] != bad-1 {
		t.Fatalf("committed offset %d, want %d (the failed record's)", got[0], bad-1)
	}
	if got := len(orderView(t, db)); got != bad-1 {
		t.Fatalf("%d orders applied, want %d", got, bad-1)
	}

	// Fixed and restarted, it continues at the failed record.
	rc := startConsumer(t, db, brokers, group, nil)
	relaytest.WaitFor(t, 60*time.Second, "the consumer to commit every record", func() bool {
		return committed(t, brokers, group)[0] == n
	})
	if err := rc.stop(t); err != nil {
		t.Fatal(err)
	}
	v := orderView(t, db)
	for i := int64(1); i <= n; i++ {
		if v[i] != (view{"placed", 1}) {
			t.Errorf("order %d: %+v, want placed once", i, v[i])
		}
	}
}

// A consumer asked to stop finishes the record in hand and commits what it
// processed before Run returns.
func TestConsumerCommitsOnShutdown(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, Topic)
	brokers := cluster.ListenAddrs()
	const n, held = 10, 4
	produceEvents(t, brokers, n)

	reached, release := make(chan struct{}), make(chan struct{})
	const group = "orders-shutdown"
	rc := startConsumer(t, db, brokers, group, func(ctx context.Context, tx pgx.Tx, e Event) error {
		if e.OrderID == held {
			close(reached)
			<-release
		}
		return applyEvent(ctx, tx, e)
	})
	select {
	case <-reached:
	case <-time.After(60 * time.Second):
		t.Fatalf("the consumer did not reach order %d", held)
	}
	if got := committed(t, brokers, group); got[0] > 0 {
		t.Fatalf("offset %d committed before the batch was processed", got[0])
	}
	// Shut down while order 4 is in hand: it finishes, the rest waits.
	rc.cancel()
	close(release)
	if err := rc.wait(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got := committed(t, brokers, group)[0]
	if got != held {
		t.Errorf("committed offset %d after shutdown, want %d (orders 1..%d processed)", got, held, held)
	}
	if v := orderView(t, db); len(v) != int(got) {
		t.Errorf("%d orders applied, %d committed", len(v), got)
	}
}

func TestDedupID(t *testing.T) {
	t.Parallel()
	h := func(kv ...string) []kgo.RecordHeader {
		var out []kgo.RecordHeader
		for i := 0; i < len(kv); i += 2 {
			out = append(out, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return out
	}
	tests := []struct {
		headers []kgo.RecordHeader
		want    string
		ok      bool
	}{
		{h("outbox-id", "7", "outbox-uuid", "0190c5e4-7b7a-7cc1-9d4e-3f1b2a6c8d90"), "uuid:0190c5e4-7b7a-7cc1-9d4e-3f1b2a6c8d90", true},
		{h("outbox-uuid", "0190c5e4-7b7a-7cc1-9d4e-3f1b2a6c8d90", "outbox-id", "7"), "uuid:0190c5e4-7b7a-7cc1-9d4e-3f1b2a6c8d90", true},
		{h("type", "order_placed", "outbox-id", "7"), "id:7", true},
		{h("type", "order_placed"), "", false},
	}
	for _, tt := range tests {
		got, ok := DedupID(&kgo.Record{Headers: tt.headers})
		if got != tt.want || ok != tt.ok {
			t.Errorf("DedupID(%v) = %q, %v; want %q, %v", tt.headers, got, ok, tt.want, tt.ok)
		}
	}
}
