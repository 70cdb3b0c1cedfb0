package relay_test

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/outboxrelay/relay/internal/kafkatest"
	"github.com/outboxrelay/relay/internal/pgstore"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/stuck"
)

// options are a row's delivery options (migration 00005); nil: not set.
type options struct {
	deliverAfter, expiresAt *time.Time
	partition               *int32
}

// insertWith writes one row with delivery options, as an application
// would, and returns its id.
func insertWith(t *testing.T, db *relaytest.DB, m relaytest.Message, o options) int64 {
	t.Helper()
	var id int64
	err := db.Pool.QueryRow(context.Background(), `
		INSERT INTO messages (topic, key, payload, deliver_after, expires_at, partition)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
		m.Topic, m.Key, m.Payload, o.deliverAfter, o.expiresAt, o.partition).Scan(&id)
	if err != nil {
		t.Fatalf("insert with options: %v", err)
	}
	return id
}

func at(t time.Time) *time.Time { return &t }
func part(p int32) *int32       { return &p }

// deliverAt runs one batch with a fixed "now" and fails the test on error.
func deliverAt(t *testing.T, r *relay.Relay, now time.Time) int {
	t.Helper()
	n, err := r.DeliverBatch(context.Background(), &now)
	if err != nil {
		t.Fatalf("batch at %v: %v", now, err)
	}
	return n
}

// A row with deliver_after is not produced before then, and it holds back
// the later rows of its key (per-key order) while the other keys flow.
func TestDeliverAfterHoldsTheRowAndItsKey(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 3, "t").ListenAddrs()
	start := time.Now()

	delayed := insertWith(t, db, relaytest.Message{Topic: "t", Key: []byte("a"), Payload: []byte("a1")}, options{deliverAfter: at(start.Add(time.Hour))})
	behind := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("a"), Payload: []byte("a2")})[0]
	other := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("b"), Payload: []byte("b1")})[0]
	keyless := insertWith(t, db, relaytest.Message{Topic: "t", Payload: []byte("n1")}, options{deliverAfter: at(start.Add(time.Hour))})
	now := time.Now() // after the inserts: their next_attempt_at is now()

	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	if n := deliverAt(t, r, now); n != 1 {
		t.Fatalf("first batch took %d rows, want only the row of the other key", n)
	}
	if n := deliverAt(t, r, start.Add(59*time.Minute)); n != 0 {
		t.Fatalf("a minute before deliver_after a batch took %d rows, want none", n)
	}
	for _, id := range []int64{delayed, behind, keyless} {
		if st := status(t, db, id); st != "pending" {
			t.Errorf("row %d is %s before deliver_after, want pending", id, st)
		}
	}
	if st := status(t, db, other); st != "sent" {
		t.Errorf("row %d of another key is %s, want sent", other, st)
	}
	if n := deliverAt(t, r, start.Add(time.Hour)); n != 3 {
		t.Fatalf("at deliver_after a batch took %d rows, want 3", n)
	}
	records := relaytest.Consume(t, brokers, 4, 10*time.Second, "t")
	checkFirstDeliveryOrder(t, records)
	var order []int64
	for _, rec := range records {
		if string(rec.Key) == "a" {
			order = append(order, outboxID(t, rec))
		}
	}
	if fmt.Sprint(order) != fmt.Sprint([]int64{delayed, behind}) {
		t.Errorf("key a delivered as %v, want %v", order, []int64{delayed, behind})
	}
}

// A delayed row at the head of the backlog, with a long run of its key's
// rows behind it, does not starve the rows of other keys: the claim widens
// its window past them, as it does past rows waiting for a retry.
func TestFarFutureDelayedRowDoesNotStarveOtherKeys(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 3, "t").ListenAddrs()
	ctx := context.Background()

	insertWith(t, db, relaytest.Message{Topic: "t", Key: []byte("later"), Payload: []byte("x")}, options{deliverAfter: at(time.Now().AddDate(1, 0, 0))})
	if _, err := db.Pool.Exec(ctx, `INSERT INTO messages (topic, key, payload) SELECT 't', 'later', 'y' FROM generate_series(1, 2000)`); err != nil {
		t.Fatal(err)
	}
	var others []relaytest.Message
	for i := range 30 {
		others = append(others, relaytest.Message{Topic: "t", Key: fmt.Appendf(nil, "k%d", i), Payload: []byte("z")})
	}
	db.Insert(t, others...)
	now := time.Now()

	r := relay.New(relay.Config{Schema: db.Schema, BatchSize: 50}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	if n := deliverAt(t, r, now); n != len(others) {
		t.Fatalf("a batch took %d rows, want the %d rows of the other keys", n, len(others))
	}
	if n := deliverAt(t, r, now); n != 0 {
		t.Fatalf("then a batch took %d rows, want none: the delayed key waits", n)
	}
	if got := db.Count(t, "pending"); got != 2001 {
		t.Errorf("%d pending rows, want the 2001 rows of the delayed key", got)
	}
}

// A row not delivered by its expires_at is escalated with error_kind
// expired and a reason, and never produced; under strict order it holds its
// key as any stuck row does. A requeue clears expires_at: the row is then
// delivered, before the row of its key it held back.
func TestExpiredRowIsEscalatedAndNeverProduced(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 1, "t").ListenAddrs()
	ctx := context.Background()
	now := time.Now()

	expiring := insertWith(t, db, relaytest.Message{Topic: "t", Key: []byte("e"), Payload: []byte("e1")}, options{expiresAt: at(now.Add(time.Minute))})
	behind := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("e"), Payload: []byte("e2")})[0]
	fresh := insertWith(t, db, relaytest.Message{Topic: "t", Key: []byte("f"), Payload: []byte("f1")}, options{expiresAt: at(now.Add(time.Hour))})

	r := relay.New(relay.Config{Schema: db.Schema, Alerter: newRecordingAlerter()}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	deliverAt(t, r, now.Add(2*time.Minute))
	s := stuckRow(t, db, expiring)
	if s.kind != pgstore.ErrorKindExpired || !strings.Contains(s.lastError, "expired: not delivered by its expires_at") {
		t.Errorf("expired row stuck as %q: %q", s.kind, s.lastError)
	}
	if st := status(t, db, behind); st != "pending" {
		t.Errorf("the row behind the expired one is %s, want pending (strict order)", st)
	}
	if st := status(t, db, fresh); st != "sent" {
		t.Errorf("a row before its expires_at is %s, want sent", st)
	}
	if n := relaytest.RecordsInTopics(t, brokers, "t"); n != 1 {
		t.Fatalf("the topic holds %d records, want 1: an expired row is never produced", n)
	}
	if rows, err := stuck.List(ctx, db.Pool, stuck.Filter{ErrorKind: pgstore.ErrorKindExpired}); err != nil || len(rows) != 1 ||
		rows[0].ExpiresAt == nil || !rows[0].ExpiresAt.Equal(now.Add(time.Minute).Truncate(time.Microsecond)) {
		t.Errorf("stuck rows of kind expired: %+v, %v; want the row with its expires_at", rows, err)
	}

	if _, err := stuck.Requeue(ctx, db.Pool, []int64{expiring}, ""); err != nil {
		t.Fatal(err)
	}
	if n := deliverAt(t, r, now.Add(3*time.Minute)); n != 2 {
		t.Fatalf("after the requeue a batch took %d rows, want the requeued row and the one behind it", n)
	}
	records := relaytest.Consume(t, brokers, 3, 10*time.Second, "t")
	checkFirstDeliveryOrder(t, records)
}

// An expires_at before deliver_after can never be met: the row is escalated
// at once with a reason that says so, not produced, and not refused at
// INSERT.
func TestExpiresBeforeDeliverAfterIsEscalated(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 1, "t").ListenAddrs()
	start := time.Now()
	id := insertWith(t, db, relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("p")},
		options{deliverAfter: at(start.Add(time.Hour)), expiresAt: at(start.Add(30 * time.Minute))})
	now := time.Now()
	r := relay.New(relay.Config{Schema: db.Schema, Alerter: newRecordingAlerter()}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	deliverAt(t, r, now)
	s := stuckRow(t, db, id)
	if s.kind != pgstore.ErrorKindExpired || !strings.Contains(s.lastError, "is before deliver_after") {
		t.Errorf("row stuck as %q: %q; want expired, saying expires_at is before deliver_after", s.kind, s.lastError)
	}
	if n := relaytest.RecordsInTopics(t, brokers, "t"); n != 0 {
		t.Errorf("the topic holds %d records, want none", n)
	}
}

// A row's partition overrides its key's; a partition the topic does not
// have is escalated alone, with the topic's partition count, while its
// neighbours (its own key's later rows aside: strict order) flow.
func TestPartitionOverride(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	const partitions = 3
	brokers := relaytest.NewCluster(t, partitions, "t").ListenAddrs()

	chosen := insertWith(t, db, relaytest.Message{Topic: "t", Key: []byte("abc"), Payload: []byte("1")}, options{partition: part(2)})
	byKey := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("abc"), Payload: []byte("2")})[0]
	keyless := insertWith(t, db, relaytest.Message{Topic: "t", Payload: []byte("3")}, options{partition: part(1)})
	missing := insertWith(t, db, relaytest.Message{Topic: "t", Key: []byte("m"), Payload: []byte("4")}, options{partition: part(7)})
	negative := insertWith(t, db, relaytest.Message{Topic: "t", Key: []byte("n"), Payload: []byte("5")}, options{partition: part(-1)})
	neighbour := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("o"), Payload: []byte("6")})[0]

	r := relay.New(relay.Config{Schema: db.Schema, Alerter: newRecordingAlerter()}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	drainBatches(t, r)
	if s := stuckRow(t, db, missing); s.kind != "row_fatal" || s.attempts != 1 ||
		!strings.Contains(s.lastError, "partition 7 does not exist: topic t has 3 partitions") {
		t.Errorf("out-of-range partition stuck as %q after %d attempts: %q", s.kind, s.attempts, s.lastError)
	}
	if s := stuckRow(t, db, negative); s.kind != "row_fatal" || !strings.Contains(s.lastError, "partition -1 is negative") {
		t.Errorf("negative partition stuck as %q: %q", s.kind, s.lastError)
	}
	// murmur2 of "abc" is 479470107 (Kafka's UtilsTest).
	want := map[int64]int32{chosen: 2, byKey: (479470107 & 0x7fffffff) % partitions, keyless: 1}
	records := relaytest.Consume(t, brokers, 4, 10*time.Second, "t")
	for _, rec := range records {
		id := outboxID(t, rec)
		if p, ok := want[id]; ok && rec.Partition != p {
			t.Errorf("row %d landed in partition %d, want %d", id, rec.Partition, p)
		}
		delete(want, id)
		if id == missing || id == negative {
			t.Errorf("row %d with a bad partition was produced", id)
		}
	}
	if st := status(t, db, neighbour); st != "sent" {
		t.Errorf("neighbour row %d is %s, want sent", neighbour, st)
	}
	if len(want) > 0 {
		t.Errorf("rows not delivered: %v", want)
	}
}

// A partition the client's metadata does not know yet, because the topic
// grew after the client last read it, is not escalated: the relay reads the
// topic from the cluster, finds the partition, and the row is delivered
// there without spending an attempt.
func TestPartitionOverrideAfterTheTopicGrew(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 1, "g").ListenAddrs()
	ctx := context.Background()
	client := relaytest.NewProducer(t, brokers)
	r := relay.New(relay.Config{Schema: db.Schema, Alerter: newRecordingAlerter()}, db.Pool, client, testLogger(t))

	// The client learns the topic with one partition.
	db.Insert(t, relaytest.Message{Topic: "g", Key: []byte("k"), Payload: []byte("first")})
	drainBatches(t, r)
	adm := kadm.NewClient(relaytest.NewProducer(t, brokers))
	if resp, err := adm.CreatePartitions(ctx, 3, "g"); err != nil || resp.Error() != nil {
		t.Fatalf("add partitions: %v, %v", err, resp.Error())
	}
	id := insertWith(t, db, relaytest.Message{Topic: "g", Key: []byte("k"), Payload: []byte("second")}, options{partition: part(3)})
	relaytest.WaitFor(t, 20*time.Second, "the row delivered to the new partition", func() bool {
		_, _ = r.DeliverBatch(ctx, nil) // the first tells of the client's stale metadata
		return status(t, db, id) != "pending"
	})
	if st := state(t, db, id); st.status != "sent" || st.attempts != 0 {
		t.Errorf("row is %s after %d attempts (%s), want sent with none spent", st.status, st.attempts, st.lastError)
	}
	records := relaytest.Consume(t, brokers, 2, 10*time.Second, "g")
	for _, rec := range records {
		if outboxID(t, rec) == id && rec.Partition != 3 {
			t.Errorf("row landed in partition %d, want 3", rec.Partition)
		}
	}
}

// A record's timestamp is its row's created_at, or the timestamp a layout
// mapped into header outbox-timestamp (epoch milliseconds); a header that is
// not a number of milliseconds leaves created_at. A backlog older than the
// produce timeout (1s here, its rows a day old) still drains in one batch:
// the produce timeout counts from the produce, not from the record's
// timestamp, as the client's own delivery timeout (kgo.RecordDeliveryTimeout)
// would, failing every such record before it is sent.
func TestRecordTimestampIsTheRowsCreatedAt(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 1, "t").ListenAddrs()
	ctx := context.Background()
	mapped := time.Date(2026, 1, 2, 3, 4, 5, 678e6, time.UTC)
	rows := []struct {
		headers string
		want    time.Time // zero: created_at
	}{
		{`{}`, time.Time{}},
		{`{"outbox-timestamp": "` + strconv.FormatInt(mapped.UnixMilli(), 10) + `"}`, mapped},
		{`{"outbox-timestamp": "soon"}`, time.Time{}},
		{`{}`, time.Time{}},
	}
	want := map[int64]time.Time{}
	for i, row := range rows {
		var id int64
		var created time.Time
		if err := db.Pool.QueryRow(ctx, `INSERT INTO messages (topic, key, payload, headers, created_at)
			VALUES ('t', $1, 'old', $2, now() - interval '1 day' + $3 * interval '1 millisecond') RETURNING id, created_at`,
			fmt.Appendf(nil, "k%d", i), row.headers, i).Scan(&id, &created); err != nil {
			t.Fatal(err)
		}
		want[id] = cmp.Or(row.want, created.Truncate(time.Millisecond))
	}
	cfg := relay.Config{Schema: db.Schema, ProduceTimeout: time.Second}
	r := relay.New(cfg, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != len(rows) {
		t.Fatalf("rows created a day ago: %d rows, %v; want %d delivered", n, err, len(rows))
	}
	if sent := db.Count(t, "sent"); sent != len(rows) {
		t.Fatalf("%d of %d rows sent in one batch, want all: a record stamped a day ago timed out", sent, len(rows))
	}
	for _, rec := range relaytest.Consume(t, brokers, len(rows), 10*time.Second, "t") {
		id := outboxID(t, rec)
		if !rec.Timestamp.Equal(want[id]) {
			t.Errorf("row %d: record timestamp %v, want %v", id, rec.Timestamp, want[id])
		}
	}
}

// A topic that bounds how old a record's timestamp may be
// (message.timestamp.before.max.ms, here an hour) would refuse a row older
// than that with INVALID_TIMESTAMP, for as long as the row waits: such a row
// goes with the time of its produce instead; a younger row keeps its
// created_at.
func TestRowOlderThanTheTopicTakesCarriesTheProduceTime(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()
	kafkatest.ServeTopicConfigs(cluster, map[string]string{"message.timestamp.before.max.ms": "3600000", "message.timestamp.type": "CreateTime"})
	insert := func(age time.Duration, headers string) (int64, time.Time) {
		var id int64
		var created time.Time
		if err := db.Pool.QueryRow(ctx, `INSERT INTO messages (topic, key, payload, headers, created_at)
			VALUES ('t', 'k', 'x', $1, now() - $2 * interval '1 millisecond') RETURNING id, created_at`,
			headers, age.Milliseconds()).Scan(&id, &created); err != nil {
			t.Fatal(err)
		}
		return id, created.Truncate(time.Millisecond)
	}
	young, youngAt := insert(10*time.Minute, `{}`)
	old, _ := insert(48*time.Hour, `{}`)
	mapped, _ := insert(0, `{"outbox-timestamp": "`+strconv.FormatInt(time.Now().Add(-48*time.Hour).UnixMilli(), 10)+`"}`)

	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	before := time.Now().Truncate(time.Millisecond)
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 3 {
		t.Fatalf("%d rows, %v; want 3 delivered", n, err)
	}
	after := time.Now()
	for _, rec := range relaytest.Consume(t, brokers, 3, 10*time.Second, "t") {
		switch id := outboxID(t, rec); id {
		case young:
			if !rec.Timestamp.Equal(youngAt) {
				t.Errorf("row created 10 minutes ago: record timestamp %v, want its created_at %v", rec.Timestamp, youngAt)
			}
		case old, mapped:
			if rec.Timestamp.Before(before) || rec.Timestamp.After(after) {
				t.Errorf("row %d stamped two days ago: record timestamp %v, want the time of the produce (%v to %v)", id, rec.Timestamp, before, after)
			}
		}
	}
}
