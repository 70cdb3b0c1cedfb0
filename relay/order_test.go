package relay_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/internal/readback"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// outboxID reads a record's outbox-id header or fails the test.
func outboxID(t *testing.T, rec *kgo.Record) int64 {
	t.Helper()
	v, ok := relaytest.Header(rec, relay.HeaderOutboxID)
	if !ok {
		t.Fatalf("record %s/%d@%d has no outbox-id", rec.Topic, rec.Partition, rec.Offset)
	}
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatalf("outbox-id %q: %v", v, err)
	}
	return id
}

// checkFirstDeliveryOrder feeds records to readback's checker, which fails
// the test on a row of a key first delivered after a later row of that key
// (or a key split over partitions), and returns how many records were
// duplicates. records must be in consumption order, which is offset order
// within a partition.
func checkFirstDeliveryOrder(t *testing.T, records []*kgo.Record) (duplicates int) {
	t.Helper()
	c := readback.NewChecker()
	c.Errorf = t.Errorf
	for _, rec := range records {
		c.Add(outboxID(t, rec), rec.Topic, rec.Key, rec.Partition)
	}
	return c.Duplicates
}

func TestPerKeyOrderWithTwoRelays(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 4, "events")
	brokers := cluster.ListenAddrs()

	// Small batches make the two relays interleave on every key.
	runRelay(t, db, brokers, relay.Config{BatchSize: 7, Instance: "a"})
	runRelay(t, db, brokers, relay.Config{BatchSize: 11, Instance: "b"})

	// Each writer owns its keys: applications that need per-key order
	// serialise writes per key, so id order is commit order.
	const writers, txs, perTx, keys = 4, 50, 10, 5
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Go(func() {
			for i := 0; i < txs; i++ {
				msgs := make([]relaytest.Message, perTx)
				for j := range msgs {
					n := (w*txs+i)*perTx + j
					msgs[j] = relaytest.Message{Topic: "events", Key: []byte(fmt.Sprintf("w%d-k%d", w, n%keys)), Payload: []byte(strconv.Itoa(n))}
				}
				db.Insert(t, msgs...)
			}
		})
	}
	wg.Wait()
	total := writers * txs * perTx
	relaytest.WaitFor(t, 60*time.Second, "every row sent", func() bool { return db.Count(t, "sent") == total })

	records := relaytest.Consume(t, brokers, total, 30*time.Second, "events")
	if dups := checkFirstDeliveryOrder(t, records); dups != 0 {
		t.Errorf("%d rows produced twice in steady state, want 0", dups)
	}
}

func TestOutOfOrderCommitLosesNothing(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()

	// The earlier id stays uncommitted while a later id commits and is sent.
	early, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = early.Rollback(ctx) }()
	earlyID := relaytest.InsertTx(t, early, relaytest.Message{Topic: "t", Key: []byte("a"), Payload: []byte("early")})[0]
	lateID := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("b"), Payload: []byte("late")})[0]
	if lateID <= earlyID {
		t.Fatalf("ids %d, %d: want the uncommitted row to have the smaller id", earlyID, lateID)
	}

	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 1 {
		t.Fatalf("first batch: %d rows, %v; want the committed row only", n, err)
	}
	if err := early.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 1 {
		t.Fatalf("second batch: %d rows, %v; want the late-committed row", n, err)
	}
	records := relaytest.Consume(t, brokers, 2, 10*time.Second, "t")
	got := []int64{outboxID(t, records[0]), outboxID(t, records[1])}
	if got[0] != lateID || got[1] != earlyID {
		t.Errorf("delivered %v, want [%d %d]", got, lateID, earlyID)
	}
}

func TestRowWaitsForEarlierPendingRowOfItsKey(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()

	ids := db.Insert(t,
		relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("1")},
		relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("2")},
		relaytest.Message{Topic: "t", Key: []byte("other"), Payload: []byte("3")},
		relaytest.Message{Topic: "u", Key: []byte("k"), Payload: []byte("same key, other topic")},
	)
	// Another relay holds the first row of key k in flight.
	inFlight, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = inFlight.Rollback(ctx) }()
	if _, err := inFlight.Exec(ctx, `SELECT 1 FROM messages WHERE id = $1 FOR UPDATE`, ids[0]); err != nil {
		t.Fatal(err)
	}

	cluster2 := relaytest.NewCluster(t, 1, "t", "u")
	brokers = cluster2.ListenAddrs()
	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 2 {
		t.Fatalf("batch while row %d is in flight: %d rows, %v; want 2 (other key, other topic)", ids[0], n, err)
	}
	if st := status(t, db, ids[1]); st != "pending" {
		t.Fatalf("row %d is %s while the earlier row of its key is in flight, want pending", ids[1], st)
	}
	if err := inFlight.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// Released: one batch takes the key's two rows, in two waves.
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 2 {
		t.Fatalf("batch after release: %d rows, %v; want 2", n, err)
	}
	records := relaytest.Consume(t, brokers, 3, 10*time.Second, "t")
	var got []int64
	for _, rec := range records {
		got = append(got, outboxID(t, rec))
	}
	if fmt.Sprint(got) != fmt.Sprint([]int64{ids[2], ids[0], ids[1]}) {
		t.Errorf("delivered %v, want [%d %d %d]", got, ids[2], ids[0], ids[1])
	}
}

func TestHeldRowsDoNotStarveOtherKeys(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	ctx := context.Background()

	var msgs []relaytest.Message
	for i := 0; i < 50; i++ {
		msgs = append(msgs, relaytest.Message{Topic: "t", Key: []byte("hot"), Payload: []byte(strconv.Itoa(i))})
	}
	hot := db.Insert(t, msgs...)
	others := db.Insert(t,
		relaytest.Message{Topic: "t", Key: []byte("x"), Payload: []byte("x")},
		relaytest.Message{Topic: "t", Key: []byte("y"), Payload: []byte("y")},
	)
	// The head of the hot key waits for a retry an hour from now.
	if _, err := db.Pool.Exec(ctx, `UPDATE messages SET next_attempt_at = now() + interval '1 hour', attempts = 1 WHERE id = $1`, hot[0]); err != nil {
		t.Fatal(err)
	}
	r := relay.New(relay.Config{Schema: db.Schema, BatchSize: 10}, db.Pool, relaytest.NewProducer(t, cluster.ListenAddrs()), testLogger(t))
	n, err := r.DeliverBatch(ctx, nil)
	if err != nil || n != 2 {
		t.Fatalf("batch: %d rows, %v; want the 2 rows of other keys past 49 held rows", n, err)
	}
	for _, id := range others {
		if st := status(t, db, id); st != "sent" {
			t.Errorf("row %d of another key is %s, want sent", id, st)
		}
	}
	if got := db.Count(t, "pending"); got != 50 {
		t.Errorf("%d pending rows, want the 50 rows of the held key", got)
	}
}

func TestJavaCompatiblePartitioning(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	const partitions = 12
	cluster := relaytest.NewCluster(t, partitions, "t")
	brokers := cluster.ListenAddrs()

	// murmur2 values from Kafka's own UtilsTest (Utils.murmur2).
	javaHash := map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	}
	for k := range javaHash {
		db.Insert(t, relaytest.Message{Topic: "t", Key: []byte(k), Payload: []byte(k)})
	}
	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	if _, err := r.DeliverBatch(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	for _, rec := range relaytest.Consume(t, brokers, len(javaHash), 10*time.Second, "t") {
		want := (javaHash[string(rec.Key)] & 0x7fffffff) % partitions
		if rec.Partition != want {
			t.Errorf("key %q landed in partition %d, Java's client picks %d", rec.Key, rec.Partition, want)
		}
	}
}

func status(t *testing.T, db *relaytest.DB, id int64) string {
	t.Helper()
	var s string
	if err := db.Pool.QueryRow(context.Background(), `SELECT status FROM messages WHERE id = $1`, id).Scan(&s); err != nil {
		t.Fatalf("status of %d: %v", id, err)
	}
	return s
}

// A batch takes a key's chain of rows and produces it in waves: when a row
// of the chain fails, the rows after it are not produced, spend no attempt,
// and wait behind it; the rows before it are delivered in order.
func TestChainStopsAtAFailedRow(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()

	var ids []int64
	for i := 0; i < 5; i++ {
		headers := `{}`
		if i == 2 {
			headers = `{"n": 1}` // not a string: can never be produced
		}
		var id int64
		if err := db.Pool.QueryRow(ctx,
			`INSERT INTO messages (topic, key, payload, headers) VALUES ('t', 'k', $1, $2) RETURNING id`,
			strconv.Itoa(i), headers).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 5 {
		t.Fatalf("batch: %d rows, %v; want the key's chain of 5", n, err)
	}
	for _, id := range ids[:2] {
		if st := status(t, db, id); st != "sent" {
			t.Errorf("row %d before the bad row: %s, want sent", id, st)
		}
	}
	if st := stuckRow(t, db, ids[2]); st.kind != "row_fatal" {
		t.Errorf("bad row: %+v, want escalated", st)
	}
	for _, id := range ids[3:] {
		if st := state(t, db, id); st.status != "pending" || st.attempts != 0 {
			t.Errorf("row %d after the bad row: %+v; want pending with no attempt spent", id, st)
		}
	}
	// Strict order: the stuck row holds the rest of its key.
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 0 {
		t.Fatalf("batch behind the stuck row: %d rows, %v; want 0", n, err)
	}
	records := relaytest.Consume(t, brokers, 2, 10*time.Second, "t")
	if a, b := outboxID(t, records[0]), outboxID(t, records[1]); a != ids[0] || b != ids[1] {
		t.Errorf("delivered [%d %d], want [%d %d]", a, b, ids[0], ids[1])
	}
}

// A row that commits late, with an id between two rows of a batch in
// flight, is delivered, and a later row of its key waits for it. (A claim
// that skipped the span of the batches in flight, tried for speed, must
// keep this.)
func TestLateRowInsideTheSpanOfABatchInFlight(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	var produces atomic.Int32
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		produces.Add(1)
		cluster.SleepControl(func() { <-release })
		return nil, nil, false
	})

	first := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("a"), Payload: []byte("first")})[0]
	lateTx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lateTx.Rollback(ctx) }()
	late := relaytest.InsertTx(t, lateTx, relaytest.Message{Topic: "t", Key: []byte("x"), Payload: []byte("late")})[0]
	last := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("b"), Payload: []byte("last")})[0]
	if !(first < late && late < last) {
		t.Fatalf("ids %d, %d, %d: want the late row between the others", first, late, last)
	}
	runRelay(t, db, cluster.ListenAddrs(), relay.Config{PollInterval: 20 * time.Millisecond})
	t.Cleanup(open) // before the relay's stop
	relaytest.WaitFor(t, 10*time.Second, "the first batch to reach Kafka", func() bool { return produces.Load() > 0 })

	// The batch of rows first and last is in flight; the late row
	// commits inside its span, and a later row of its key arrives.
	if err := lateTx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("x"), Payload: []byte("after the late row")})
	open()

	relaytest.WaitFor(t, 10*time.Second, "every row sent", func() bool { return db.Count(t, "sent") == 4 })
	records := relaytest.Consume(t, cluster.ListenAddrs(), 4, 10*time.Second, "t")
	checkFirstDeliveryOrder(t, records)
	if st := status(t, db, late); st != "sent" {
		t.Errorf("late row %d is %s", late, st)
	}
}
