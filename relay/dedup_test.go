package relay_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/stuck"
)

// deliverRows runs batches until n rows went through.
func deliverRows(t *testing.T, r *relay.Relay, n int) {
	t.Helper()
	ctx := context.Background()
	for done := 0; done < n; {
		got, err := r.DeliverBatch(ctx, nil)
		if err != nil {
			t.Fatalf("deliver: %v", err)
		}
		if got == 0 {
			t.Fatalf("delivered %d rows, want %d: nothing more to claim", done, n)
		}
		done += got
	}
}

// After an asynchronous failover or a point-in-time restore, rows sent from
// the old primary can be gone from the database while the identity stands
// where it stood before them, so new events get their ids again. Their
// records carry other outbox-uuid values, so a consumer that dedups on
// outbox-uuid keeps every event (deduping on outbox-id would drop the new
// ones as duplicates).
func TestFailoverReissuedIDsCarryNewOutboxUUID(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	brokers := relaytest.NewCluster(t, 1, "events").ListenAddrs()
	r := relay.New(relay.Config{Schema: db.Schema, Alerter: newRecordingAlerter()}, db.Pool,
		relaytest.NewProducer(t, brokers), testLogger(t))

	events := func(prefix string) []relaytest.Message {
		var m []relaytest.Message
		for i := range 3 {
			m = append(m, relaytest.Message{Topic: "events", Key: fmt.Appendf(nil, "k%d", i), Payload: fmt.Appendf(nil, "%s-%d", prefix, i)})
		}
		return m
	}
	before := db.Insert(t, events("old-primary")...)
	deliverRows(t, r, 3)

	// The failover: the new primary never received the sent rows, and its
	// identity continues from before them.
	if _, err := db.Pool.Exec(ctx, `DELETE FROM messages WHERE id >= $1`, before[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, fmt.Sprintf(`ALTER TABLE messages ALTER COLUMN id RESTART WITH %d`, before[0])); err != nil {
		t.Fatal(err)
	}
	after := db.Insert(t, events("new-primary")...)
	for i := range after {
		if after[i] != before[i] {
			t.Fatalf("the restarted identity issued %v, want the old ids %v again", after, before)
		}
	}
	deliverRows(t, r, 3)

	recs := relaytest.Consume(t, brokers, 6, 30*time.Second, "events")
	byUUID := map[string]string{}      // outbox-uuid → payload
	uuidsOfID := map[string][]string{} // outbox-id → outbox-uuids
	for _, rec := range recs {
		id, _ := relaytest.Header(rec, relay.HeaderOutboxID)
		u, ok := relaytest.Header(rec, relay.HeaderOutboxUUID)
		if !ok {
			t.Fatalf("record of outbox-id %s has no %s header", id, relay.HeaderOutboxUUID)
		}
		if prev, dup := byUUID[u]; dup {
			t.Errorf("outbox-uuid %s carried by %q and %q: a consumer deduping on it drops an event", u, prev, rec.Value)
		}
		byUUID[u] = string(rec.Value)
		uuidsOfID[id] = append(uuidsOfID[id], u)
	}
	if len(byUUID) != 6 {
		t.Errorf("deduping on outbox-uuid keeps %d of 6 events", len(byUUID))
	}
	for _, id := range before {
		us := uuidsOfID[strconv.FormatInt(id, 10)]
		if len(us) != 2 || us[0] == us[1] {
			t.Errorf("outbox-id %d: outbox-uuids %v, want two different ones (old and new event)", id, us)
		}
	}
}

// An application header named outbox-id or outbox-uuid does not replace the
// relay's: consumers must be able to trust those to identify the row. The
// row is still delivered (with its other headers), and the clash is logged
// and counted so the application can be fixed.
func TestApplicationHeaderNamedLikeOursIsReplacedAndCounted(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 1, "events").ListenAddrs()
	reg := prometheus.NewRegistry()
	r := relay.New(relay.Config{Schema: db.Schema, Alerter: newRecordingAlerter(), Metrics: relay.NewMetrics(reg)}, db.Pool,
		relaytest.NewProducer(t, brokers), testLogger(t))
	id := db.Insert(t, relaytest.Message{Topic: "events", Key: []byte("k"), Payload: []byte("p"),
		Headers: map[string]string{relay.HeaderOutboxID: "42", relay.HeaderOutboxUUID: "mine", "type": "created"}})[0]
	var uuid string
	if err := db.Pool.QueryRow(context.Background(), `SELECT uuid::text FROM messages WHERE id = $1`, id).Scan(&uuid); err != nil {
		t.Fatal(err)
	}
	deliverRows(t, r, 1)

	rec := relaytest.Consume(t, brokers, 1, 30*time.Second, "events")[0]
	want := map[string]string{relay.HeaderOutboxID: strconv.FormatInt(id, 10), relay.HeaderOutboxUUID: uuid, "type": "created"}
	if len(rec.Headers) != len(want) {
		t.Errorf("record has %d headers %v, want %v", len(rec.Headers), rec.Headers, want)
	}
	for k, v := range want {
		if got, _ := relaytest.Header(rec, k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var replaced float64
	for _, mf := range mfs {
		if mf.GetName() == "outbox_relay_reserved_headers_replaced_total" {
			for _, m := range mf.GetMetric() {
				replaced += m.GetCounter().GetValue()
			}
		}
	}
	if replaced != 2 {
		t.Errorf("outbox_relay_reserved_headers_replaced_total = %v, want 2", replaced)
	}
}

// A row keeps its uuid when it is escalated, requeued and discarded, so a
// record produced after a requeue carries the same outbox-uuid as one that
// may have reached Kafka before the row got stuck.
func TestUUIDKeptThroughStuckRequeueAndDiscard(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	brokers := relaytest.NewCluster(t, 1, "events").ListenAddrs()
	r := relay.New(relay.Config{Schema: db.Schema, Alerter: newRecordingAlerter()}, db.Pool,
		relaytest.NewProducer(t, brokers), testLogger(t))
	insertBad := func(key string) (int64, string) {
		var id int64
		var uuid string
		// A header that is not a string: escalated at once.
		err := db.Pool.QueryRow(ctx, `INSERT INTO messages (topic, key, payload, headers) VALUES ('events', $1, 'p', '{"n": 1}') RETURNING id, uuid::text`, key).Scan(&id, &uuid)
		if err != nil {
			t.Fatal(err)
		}
		return id, uuid
	}
	requeued, uuid := insertBad("a")
	discarded, discardedUUID := insertBad("b")
	deliverRows(t, r, 2)
	for id, want := range map[int64]string{requeued: uuid, discarded: discardedUUID} {
		var got string
		if err := db.Pool.QueryRow(ctx, `SELECT uuid::text FROM stuck_messages WHERE id = $1`, id).Scan(&got); err != nil || got != want {
			t.Errorf("stuck row %d has uuid %q (%v), want %s", id, got, err, want)
		}
	}

	if st, err := stuck.Get(ctx, db.Pool, requeued); err != nil || st.UUID != uuid {
		t.Errorf("relay stuck show: uuid %q (%v), want %s", st.UUID, err, uuid)
	}

	// The operator fixes the headers and requeues.
	if _, err := db.Pool.Exec(ctx, `UPDATE stuck_messages SET headers = '{}' WHERE id = $1`, requeued); err != nil {
		t.Fatal(err)
	}
	if ids, err := stuck.Requeue(ctx, db.Pool, []int64{requeued}, ""); err != nil || len(ids) != 1 {
		t.Fatalf("requeue: %v, %v", ids, err)
	}
	deliverRows(t, r, 1)
	rec := relaytest.Consume(t, brokers, 1, 30*time.Second, "events")[0]
	if got, _ := relaytest.Header(rec, relay.HeaderOutboxUUID); got != uuid {
		t.Errorf("requeued row's record has outbox-uuid %q, want its original %s", got, uuid)
	}

	if ids, err := stuck.Discard(ctx, db.Pool, []int64{discarded}, "alice", "test"); err != nil || len(ids) != 1 {
		t.Fatalf("discard: %v, %v", ids, err)
	}
	var got string
	if err := db.Pool.QueryRow(ctx, `SELECT uuid::text FROM discarded_messages WHERE id = $1`, discarded).Scan(&got); err != nil || got != discardedUUID {
		t.Errorf("discarded row has uuid %q (%v), want %s", got, err, discardedUUID)
	}
}

// Migration 00002 adds the uuid column to an outbox that already holds rows
// without rewriting the table (the table keeps its file; a rewrite would
// stop every application INSERT for its duration on a large table): the
// pending and stuck rows get a UUID, so every record produced from then on
// carries one; sent rows keep NULL; new rows get one by default, and a row
// without one is refused.
func TestUUIDMigrationKeepsTableAndFillsBacklog(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	cfg, err := relay.PoolConfig(db.URL, db.Schema)
	if err != nil {
		t.Fatal(err)
	}
	m, err := relay.NewMigrator(ctx, cfg, db.Schema)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// Back to 00001, the schema before the uuid.
	migrateDownTo1(t, m)
	var pending, sent, stuck int64
	err = db.Pool.QueryRow(ctx, `
		WITH p AS (INSERT INTO messages (topic, payload) VALUES ('t', 'pending') RETURNING id),
		     s AS (INSERT INTO messages (topic, payload, status, sent_at, kafka_partition, kafka_offset)
		           VALUES ('t', 'sent', 'sent', now(), 0, 0) RETURNING id)
		SELECT (SELECT id FROM p), (SELECT id FROM s)`).Scan(&pending, &sent)
	if err != nil {
		t.Fatal(err)
	}
	stuck = sent + 1000
	if _, err := db.Pool.Exec(ctx, `INSERT INTO stuck_messages (id, topic, created_at, attempts, last_error, error_kind)
		VALUES ($1, 't', now(), 1, 'x', 'row_fatal')`, stuck); err != nil {
		t.Fatal(err)
	}
	var fileBefore, fileAfter int64
	if err := db.Pool.QueryRow(ctx, `SELECT pg_relation_filenode('messages')::bigint`).Scan(&fileBefore); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.Pool.QueryRow(ctx, `SELECT pg_relation_filenode('messages')::bigint`).Scan(&fileAfter); err != nil {
		t.Fatal(err)
	}
	if fileAfter != fileBefore {
		t.Errorf("the migration rewrote messages (file %d, now %d)", fileBefore, fileAfter)
	}
	hasUUID := func(table string, id int64) bool {
		var ok bool
		if err := db.Pool.QueryRow(ctx, `SELECT uuid IS NOT NULL FROM `+table+` WHERE id = $1`, id).Scan(&ok); err != nil {
			t.Fatalf("%s %d: %v", table, id, err)
		}
		return ok
	}
	if !hasUUID("messages", pending) {
		t.Error("a row pending at migration time has no uuid: its record would carry no outbox-uuid")
	}
	if hasUUID("messages", sent) {
		t.Error("a row sent before the migration was given a uuid: the migration touched the history")
	}
	if !hasUUID("stuck_messages", stuck) {
		t.Error("a row stuck at migration time has no uuid")
	}
	fresh := db.Insert(t, relaytest.Message{Topic: "t", Payload: []byte("new")})[0]
	if !hasUUID("messages", fresh) {
		t.Error("a row inserted after the migration has no uuid")
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO messages (topic, uuid) VALUES ('t', NULL)`); err == nil {
		t.Error("a row with a NULL uuid was accepted")
	}
}

// Migration 00002 waits at most a few seconds for a batch in flight to let
// go of messages (every application INSERT queues behind its waiting ALTER
// TABLE), then fails without having changed anything, to be run again.
func TestUUIDMigrationGivesUpBehindALongBatch(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	cfg, err := relay.PoolConfig(db.URL, db.Schema)
	if err != nil {
		t.Fatal(err)
	}
	m, err := relay.NewMigrator(ctx, cfg, db.Schema)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	migrateDownTo1(t, m)

	// A batch that waits for Kafka: its transaction holds a lock on messages.
	batch, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = batch.Rollback(ctx) }()
	if _, err := batch.Exec(ctx, `SELECT id FROM messages FOR UPDATE SKIP LOCKED`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	upCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, err = m.Up(upCtx)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "55P03" { // lock_not_available
		t.Fatalf("migrate up behind a batch in flight: %v, want a lock timeout", err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("migrate up waited %v for the lock", took)
	}
	if err := batch.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Up(ctx); err != nil {
		t.Fatalf("migrate up once the batch ended: %v", err)
	}
	if err := relay.CheckSchema(ctx, db.Pool); err != nil {
		t.Fatal(err)
	}
}

// migrateDownTo1 rolls migrations back until only 00001 is applied.
func migrateDownTo1(t *testing.T, m *relay.Migrator) {
	t.Helper()
	ctx := context.Background()
	for {
		st, err := m.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		applied := 0
		for _, s := range st {
			if s.State == "applied" {
				applied++
			}
		}
		if applied <= 1 {
			return
		}
		if err := m.Down(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
