package main

// Taking over existing outboxes: a Debezium outbox table and a table of the
// application's own layout, each copied into the outbox by the trigger the
// relay installs at start, and the codec of RELAY_KAFKA_COMPRESSION.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/internal/relaytest"
)

// codecWatch records the compression codec of every record batch the
// broker receives.
type codecWatch struct {
	mu     sync.Mutex
	codecs map[int8]int // batch attributes & 7 → batches
}

func watchCodecs(cluster *kfake.Cluster) *codecWatch {
	w := &codecWatch{codecs: map[int8]int{}}
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		for _, t := range req.(*kmsg.ProduceRequest).Topics {
			for _, p := range t.Partitions {
				var b kmsg.RecordBatch
				if err := b.ReadFrom(p.Records); err == nil {
					w.mu.Lock()
					w.codecs[int8(b.Attributes&0x07)]++
					w.mu.Unlock()
				}
			}
		}
		return nil, nil, false
	})
	return w
}

func (w *codecWatch) only(t *testing.T, codec int8, name string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.codecs) != 1 || w.codecs[codec] == 0 {
		t.Errorf("batches by codec %v, want only %s (%d)", w.codecs, name, codec)
	}
}

// kcatRecord is one record as `kcat -J` prints it.
type kcatRecord struct {
	Topic   string   `json:"topic"`
	Key     *string  `json:"key"`
	Payload *string  `json:"payload"`
	Headers []string `json:"headers"` // name, value, name, value...
}

func (r kcatRecord) header(name string) (string, bool) {
	for i := 0; i+1 < len(r.Headers); i += 2 {
		if r.Headers[i] == name {
			return r.Headers[i+1], true
		}
	}
	return "", false
}

// kcat reads every record of topic with the kcat command (an independent,
// librdkafka-based client), from the start to the end of each partition.
func kcat(t *testing.T, brokers []string, topic string) []kcatRecord {
	t.Helper()
	path, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatalf("kcat is not installed (apt-get install -y kcat; .ci/run installs it): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, "-b", strings.Join(brokers, ","), "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kcat: %v\n%s", err, stderr.String())
	}
	var recs []kcatRecord
	for line := range strings.Lines(string(out)) {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var r kcatRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("kcat line %q: %v", line, err)
		}
		recs = append(recs, r)
	}
	return recs
}

// createDebeziumTable creates Debezium's documented outbox table.
func createDebeziumTable(t *testing.T, db *relaytest.DB) string {
	t.Helper()
	_, err := db.Pool.Exec(context.Background(), `CREATE TABLE `+pgx.Identifier{db.Schema, "outboxevent"}.Sanitize()+` (
		id            uuid         NOT NULL PRIMARY KEY,
		aggregatetype varchar(255) NOT NULL,
		aggregateid   varchar(255) NOT NULL,
		type          varchar(255) NOT NULL,
		payload       jsonb)`)
	if err != nil {
		t.Fatal(err)
	}
	return db.Schema + ".outboxevent"
}

// debeziumEvent is one event as a Debezium application writes it.
type debeziumEvent struct {
	id, aggregateType, aggregateID, eventType, payload string
}

// insertAndDelete writes events and deletes them in one transaction, as
// applications that keep their outbox table empty do.
func insertAndDelete(ctx context.Context, db *relaytest.DB, events []debeziumEvent) error {
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	tbl := pgx.Identifier{db.Schema, "outboxevent"}.Sanitize()
	for _, e := range events {
		if _, err := tx.Exec(ctx, `INSERT INTO `+tbl+` (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, $3, $4, $5)`,
			e.id, e.aggregateType, e.aggregateID, e.eventType, e.payload); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+tbl+` WHERE id = $1`, e.id); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

func newUUID(t *testing.T, db *relaytest.DB) string {
	t.Helper()
	var id string
	if err := db.Pool.QueryRow(context.Background(), `SELECT gen_random_uuid()::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// An application written for Debezium's outbox event router, unchanged:
// it inserts its events and deletes them in the same transaction. kcat
// reads back what Debezium would have produced: topic
// outbox.event.<aggregatetype>, key aggregateid, the payload as the value,
// the event id in header id and, with type:header:eventType placed as in
// the application's Debezium configuration, the type in header eventType.
// The batches arrive compressed with RELAY_KAFKA_COMPRESSION's codec.
func TestDebeziumApplicationUnchanged(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	table := createDebeziumTable(t, db)
	cluster := relaytest.NewCluster(t, 3, "outbox.event.order", "outbox.event.customer")
	codecs := watchCodecs(cluster)
	brokers := cluster.ListenAddrs()
	p := startRelay(t, relayEnv(db, brokers,
		"RELAY_DEBEZIUM_TABLE", table,
		"RELAY_DEBEZIUM_ADDITIONAL_PLACEMENT", "type:header:eventType",
		"RELAY_KAFKA_COMPRESSION", "lz4",
		"RELAY_SHUTDOWN_TIMEOUT", "5s"), "run")
	ready := p.waitLog(30*time.Second, "copy_trigger_ready")
	if ready["table"] != table || ready["installed_now"] != true {
		t.Errorf("copy_trigger_ready: %v", ready)
	}
	p.waitLog(30*time.Second, "http_listening")

	// Payloads in jsonb's own text form (keys by length, then bytes), which
	// is what both Debezium and the relay read back from a jsonb column.
	long := `{"id": 1, "lines": [` + strings.Repeat(`{"qty": 2, "sku": "A-1"}, `, 40) + `{"qty": 1, "sku": "B-2"}]}`
	events := []debeziumEvent{
		{newUUID(t, db), "order", "1", "OrderCreated", long},
		{newUUID(t, db), "customer", "7", "CustomerRegistered", `{"name": "Ada"}`},
		{newUUID(t, db), "order", "1", "OrderShipped", `{"id": 1, "status": "shipped"}`},
	}
	if err := insertAndDelete(context.Background(), db, events); err != nil {
		t.Fatalf("the application's transaction: %v", err)
	}
	var left int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM `+pgx.Identifier{db.Schema, "outboxevent"}.Sanitize()).Scan(&left); err != nil || left != 0 {
		t.Fatalf("the application's table holds %d rows (%v), want 0", left, err)
	}
	waitSent(t, db, len(events), 30*time.Second)

	got := append(kcat(t, brokers, "outbox.event.order"), kcat(t, brokers, "outbox.event.customer")...)
	if len(got) != len(events) {
		t.Fatalf("kcat read %d records, want %d: %+v", len(got), len(events), got)
	}
	byID := map[string]kcatRecord{}
	for _, r := range got {
		id, _ := r.header("id")
		byID[id] = r
	}
	for _, e := range events {
		r, ok := byID[e.id]
		if !ok {
			t.Errorf("no record has header id=%s", e.id)
			continue
		}
		if r.Topic != "outbox.event."+e.aggregateType || r.Key == nil || *r.Key != e.aggregateID || r.Payload == nil || *r.Payload != e.payload {
			t.Errorf("event %s: record %+v, want topic %q key %q value %q", e.id, r, "outbox.event."+e.aggregateType, e.aggregateID, e.payload)
		}
		if v, _ := r.header("eventType"); v != e.eventType {
			t.Errorf("event %s: header eventType %q, want %q", e.id, v, e.eventType)
		}
		// The relay's own two: outbox-uuid is the event id.
		if v, _ := r.header("outbox-uuid"); v != e.id {
			t.Errorf("event %s: header outbox-uuid %q, want the event id", e.id, v)
		}
		if _, ok := r.header("outbox-id"); !ok || len(r.Headers) != 8 {
			t.Errorf("event %s: headers %v, want id, eventType, outbox-id and outbox-uuid", e.id, r.Headers)
		}
	}
	// Per key, in the order the application wrote them.
	var order []string
	for _, r := range kcat(t, brokers, "outbox.event.order") {
		v, _ := r.header("eventType")
		order = append(order, v)
	}
	if !slices.Equal(order, []string{"OrderCreated", "OrderShipped"}) {
		t.Errorf("order 1's events arrived as %v", order)
	}
	codecs.only(t, 3, "lz4")
	stopRelay(t, p, 8*time.Second)
}

// Per-key order and at-least-once hold through the copy trigger: writers
// insert-and-delete events of their own keys concurrently while two relays
// deliver; every event arrives, intact, the first delivery of each in the
// order its key's events were written.
func TestDebeziumOrderAndAtLeastOnce(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	table := createDebeziumTable(t, db)
	topics := []string{"outbox.event.order", "outbox.event.payment"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()
	env := relayEnv(db, brokers, "RELAY_DEBEZIUM_TABLE", table, "RELAY_BATCH_SIZE", "25", "RELAY_SHUTDOWN_TIMEOUT", "5s")
	a := startRelay(t, env, "run")
	b := startRelay(t, env, "run")
	a.waitLog(30*time.Second, "http_listening")
	b.waitLog(30*time.Second, "http_listening")

	const writers, perWriter, perTx, keysPerWriter = 4, 300, 5, 5
	written := make([][]debeziumEvent, writers)
	var g errgroup.Group
	for w := range writers {
		g.Go(func() error {
			ctx := context.Background()
			for start := 0; start < perWriter; start += perTx {
				var tx []debeziumEvent
				for i := start; i < start+perTx; i++ {
					var id string
					if err := db.Pool.QueryRow(ctx, `SELECT gen_random_uuid()::text`).Scan(&id); err != nil {
						return err
					}
					tx = append(tx, debeziumEvent{
						id: id, aggregateType: []string{"order", "payment"}[i%2],
						aggregateID: fmt.Sprintf("w%d-%d", w, i%keysPerWriter), eventType: "Changed",
						payload: fmt.Sprintf(`{"n": %d, "writer": %d}`, i, w),
					})
				}
				if err := insertAndDelete(ctx, db, tx); err != nil {
					return err
				}
				written[w] = append(written[w], tx...)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	// What each outbox row must carry, from what the application wrote;
	// the copy's row id is found by the event id it carries as its uuid.
	byUUID := map[string]debeziumEvent{}
	for _, ws := range written {
		for _, e := range ws {
			byUUID[e.id] = e
		}
	}
	rows := map[int64]relaytest.Message{}
	dbRows, err := db.Pool.Query(context.Background(), `SELECT id, uuid::text FROM messages`)
	if err != nil {
		t.Fatal(err)
	}
	for dbRows.Next() {
		var id int64
		var u string
		if err := dbRows.Scan(&id, &u); err != nil {
			t.Fatal(err)
		}
		e, ok := byUUID[u]
		if !ok {
			t.Fatalf("outbox row %d carries uuid %s, which is no event", id, u)
		}
		delete(byUUID, u)
		rows[id] = relaytest.Message{Topic: "outbox.event." + e.aggregateType, Key: []byte(e.aggregateID), Payload: []byte(e.payload), Headers: map[string]string{"id": e.id}}
	}
	if err := dbRows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(byUUID) != 0 {
		t.Fatalf("%d events were not copied into the outbox", len(byUUID))
	}
	recs := consumeIDs(t, brokers, rows, 90*time.Second, topics...)
	dups := checkDelivery(t, rows, recs, false)
	t.Logf("%d records for %d events (%d duplicates)", len(recs), len(rows), dups)
	stopRelay(t, a, 8*time.Second)
	stopRelay(t, b, 8*time.Second)
}

// A table of the application's own layout: the topic from a template over
// a column, key, payload and timestamp each from a column, chosen columns
// as headers. A row whose template renders an invalid topic is still
// inserted, and escalated by the relay with the rendered name.
func TestCustomLayoutDelivered(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	tbl := pgx.Identifier{db.Schema, "order_events"}.Sanitize()
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE `+tbl+` (
		event_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		kind       text NOT NULL,
		order_id   bigint NOT NULL,
		body       bytea,
		created_at timestamptz NOT NULL,
		actor      text)`); err != nil {
		t.Fatal(err)
	}
	cluster := relaytest.NewCluster(t, 3, "orders.created", "orders.paid")
	brokers := cluster.ListenAddrs()
	p := startRelay(t, relayEnv(db, brokers,
		"RELAY_LAYOUT_TABLE", db.Schema+".order_events",
		"RELAY_LAYOUT_TOPIC", "orders.{kind}",
		"RELAY_LAYOUT_KEY", "order_id",
		"RELAY_LAYOUT_PAYLOAD", "body",
		"RELAY_LAYOUT_TIMESTAMP", "created_at",
		"RELAY_LAYOUT_HEADERS", "event_id,actor:changed-by",
		"RELAY_SHUTDOWN_TIMEOUT", "5s"), "run")
	p.waitLog(30*time.Second, "copy_trigger_ready")
	p.waitLog(30*time.Second, "http_listening")

	for _, q := range []string{
		`INSERT INTO ` + tbl + ` (kind, order_id, body, created_at, actor) VALUES ('created', 42, '\x7b7d', '2026-01-02 03:04:05.678+00', 'ada')`,
		`INSERT INTO ` + tbl + ` (kind, order_id, body, created_at, actor) VALUES ('paid', 42, NULL, '2026-01-02 03:04:06+00', NULL)`,
		`INSERT INTO ` + tbl + ` (kind, order_id, body, created_at) VALUES ('re funded', 43, 'x', now())`,
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatalf("the application's INSERT failed: %v", err)
		}
	}
	recs := relaytest.Consume(t, brokers, 2, 30*time.Second, "orders.created", "orders.paid")
	slices.SortFunc(recs, func(a, b *kgo.Record) int { return strings.Compare(a.Topic, b.Topic) })
	want := []struct {
		topic, value string
		tombstone    bool
		headers      map[string]string
	}{
		{"orders.created", "{}", false, map[string]string{"event_id": "1", "changed-by": "ada", "outbox-timestamp": "1767323045678"}},
		{"orders.paid", "", true, map[string]string{"event_id": "2", "outbox-timestamp": "1767323046000"}},
	}
	for i, w := range want {
		r := recs[i]
		if r.Topic != w.topic || string(r.Key) != "42" || string(r.Value) != w.value || (r.Value == nil) != w.tombstone {
			t.Errorf("record %d: topic %q key %q value %q, want %q 42 %q", i, r.Topic, r.Key, r.Value, w.topic, w.value)
		}
		for k, v := range w.headers {
			if got, _ := relaytest.Header(r, k); got != v {
				t.Errorf("record %d: header %s = %q, want %q", i, k, got, v)
			}
		}
		if len(r.Headers) != len(w.headers)+2 {
			t.Errorf("record %d: headers %v", i, r.Headers)
		}
		// The mapped timestamp, months before the produce: the record
		// still goes within the produce timeout of 30s.
		if got := strconv.FormatInt(r.Timestamp.UnixMilli(), 10); got != w.headers["outbox-timestamp"] {
			t.Errorf("record %d: timestamp %s (%v), want the mapped one, %s", i, got, r.Timestamp, w.headers["outbox-timestamp"])
		}
	}
	var reason string
	relaytest.WaitFor(t, 30*time.Second, "the row with an invalid topic escalated", func() bool {
		err := db.Pool.QueryRow(ctx, `SELECT last_error FROM stuck_messages WHERE topic = 'orders.re funded'`).Scan(&reason)
		return err == nil
	})
	if !strings.Contains(reason, `"orders.re funded"`) {
		t.Errorf("escalated with %q, want the rendered topic named", reason)
	}
	stopRelay(t, p, 8*time.Second)
}

// A mapping that does not fit its table stops the relay at start with exit
// code 2 and a message naming the variable and the column; nothing is
// installed.
func TestBadMappingRefusedAtStart(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	table := createDebeziumTable(t, db)
	if _, err := db.Pool.Exec(context.Background(), `CREATE TABLE `+pgx.Identifier{db.Schema, "events"}.Sanitize()+` (kind text, body int[])`); err != nil {
		t.Fatal(err)
	}
	cluster := relaytest.NewCluster(t, 1, "x")
	cases := []struct {
		vars []string
		want string
	}{
		{[]string{"RELAY_DEBEZIUM_TABLE", db.Schema + ".outbox_event"}, "RELAY_DEBEZIUM_TABLE: table " + db.Schema + ".outbox_event does not exist"},
		{[]string{"RELAY_DEBEZIUM_TABLE", table, "RELAY_DEBEZIUM_FIELD_EVENT_KEY", "aggregate_id"}, `RELAY_DEBEZIUM_FIELD_EVENT_KEY: column "aggregate_id" does not exist`},
		{[]string{"RELAY_LAYOUT_TABLE", db.Schema + ".events", "RELAY_LAYOUT_TOPIC", "{kind}", "RELAY_LAYOUT_PAYLOAD", "body"}, `RELAY_LAYOUT_PAYLOAD: column "body" has type integer[], which cannot be a payload`},
		{[]string{"RELAY_LAYOUT_TABLE", db.Schema + ".events", "RELAY_LAYOUT_TOPIC", "events.{type}", "RELAY_LAYOUT_PAYLOAD", "kind"}, `RELAY_LAYOUT_TOPIC: column "type" does not exist`},
	}
	for _, c := range cases {
		p := startRelay(t, relayEnv(db, cluster.ListenAddrs(), c.vars...), "run")
		if code := p.waitExit(60 * time.Second); code != 2 {
			t.Errorf("%v: exit %d, want 2", c.vars, code)
		}
		if out := p.output("stderr"); !strings.Contains(out, c.want) {
			t.Errorf("%v: stderr does not say %q:\n%s", c.vars, c.want, out)
		}
	}
	var n int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace s ON s.oid = c.relnamespace WHERE s.nspname = $1 AND NOT t.tgisinternal`, db.Schema).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 { // messages_wakeup only
		t.Errorf("%d triggers in the schema after refused starts, want only the wake-up", n)
	}
}

// Each RELAY_KAFKA_COMPRESSION codec reaches the broker as that codec.
func TestKafkaCompressionCodec(t *testing.T) {
	t.Parallel()
	for codec, attr := range map[string]int8{"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4} {
		cluster := relaytest.NewCluster(t, 1, "t")
		w := watchCodecs(cluster)
		cfg, err := loadConfig(mapEnv(map[string]string{"RELAY_KAFKA_COMPRESSION": codec}))
		if err != nil {
			t.Fatal(err)
		}
		opt, _ := cfg.compression()
		cl := relaytest.NewProducer(t, cluster.ListenAddrs(), opt)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = cl.ProduceSync(ctx, &kgo.Record{Topic: "t", Value: bytes.Repeat([]byte("compressible "), 100)}).FirstErr()
		cancel()
		if err != nil {
			t.Fatalf("%s: produce: %v", codec, err)
		}
		w.only(t, attr, codec+" ("+strconv.Itoa(int(attr))+")")
	}
}

// relay migrate up installs the copy trigger too, for deployments where the
// outbox's owner installs it and the relay runs with fewer grants; a second
// run changes nothing.
func TestMigrateInstallsTheCopyTrigger(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	table := createDebeziumTable(t, db)
	env := map[string]string{"RELAY_DATABASE_URL": db.URL, "RELAY_SCHEMA": db.Schema, "RELAY_DEBEZIUM_TABLE": table}
	for range 2 {
		stdout, _, err := runCLI(t, env, "migrate", "up")
		if err != nil || !strings.Contains(stdout, "copy triggers in place on 1 table(s)") {
			t.Fatalf("relay migrate up: %v\n%s", err, stdout)
		}
	}
	if err := insertAndDelete(context.Background(), db, []debeziumEvent{{newUUID(t, db), "order", "1", "OrderCreated", `{}`}}); err != nil {
		t.Fatal(err)
	}
	if n := db.Count(t, "pending"); n != 1 {
		t.Errorf("%d pending rows after one event, want 1", n)
	}
}
