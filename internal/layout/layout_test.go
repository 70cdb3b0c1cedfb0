package layout_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/relay/internal/layout"
	"github.com/outboxrelay/relay/internal/relaytest"
)

// debeziumNames are the setting names the tests expect in errors.
var debeziumNames = layout.DebeziumSettingNames{
	Table: "RELAY_DEBEZIUM_TABLE", EventID: "RELAY_DEBEZIUM_FIELD_EVENT_ID", EventKey: "RELAY_DEBEZIUM_FIELD_EVENT_KEY",
	EventPayload: "RELAY_DEBEZIUM_FIELD_EVENT_PAYLOAD", EventTimestamp: "RELAY_DEBEZIUM_FIELD_EVENT_TIMESTAMP",
	RouteByField: "RELAY_DEBEZIUM_ROUTE_BY_FIELD", TopicReplacement: "RELAY_DEBEZIUM_ROUTE_TOPIC_REPLACEMENT",
	AdditionalPlace: "RELAY_DEBEZIUM_ADDITIONAL_PLACEMENT", TracingSpanColumn: "RELAY_DEBEZIUM_TRACING_FIELD",
}

func debeziumDefaults(table string) layout.DebeziumSettings {
	return layout.DebeziumSettings{
		Table: table, EventID: "id", EventKey: "aggregateid", EventPayload: "payload",
		RouteByField: "aggregatetype", TopicReplacement: "outbox.event.${routedByValue}", Names: debeziumNames,
	}
}

// debeziumTable creates Debezium's documented outbox table in the test's
// schema, with a timestamp and a tracing column.
func debeziumTable(t *testing.T, db *relaytest.DB, name string) string {
	t.Helper()
	_, err := db.Pool.Exec(context.Background(), `CREATE TABLE `+pgx.Identifier{db.Schema, name}.Sanitize()+` (
		id uuid NOT NULL PRIMARY KEY,
		aggregatetype varchar(255),
		aggregateid varchar(255),
		type varchar(255),
		payload jsonb,
		timestamp timestamptz,
		tracingspancontext varchar(256))`)
	if err != nil {
		t.Fatal(err)
	}
	return db.Schema + "." + name
}

func install(t *testing.T, db *relaytest.DB, ms ...layout.Mapping) ([]layout.Installed, error) {
	t.Helper()
	conn, err := db.Pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	return layout.Install(context.Background(), conn.Conn(), db.Schema, ms)
}

type copied struct {
	Topic   string
	Key     []byte
	Payload []byte
	Headers map[string]string
	UUID    string
}

func messages(t *testing.T, db *relaytest.DB) []copied {
	t.Helper()
	rows, err := db.Pool.Query(context.Background(), `SELECT topic, key, payload, headers, uuid::text FROM messages ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var out []copied
	for rows.Next() {
		var c copied
		var h []byte
		if err := rows.Scan(&c.Topic, &c.Key, &c.Payload, &h, &c.UUID); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(h, &c.Headers); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// An application written for Debezium inserts its event and deletes it in
// the same transaction: the trigger has copied it into messages by then,
// with the topic, key, payload and headers of the router's defaults.
func TestDebeziumInsertThenDeleteIsCopied(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	table := debeziumTable(t, db, "outboxevent")
	s := debeziumDefaults(table)
	s.EventTimestamp = "timestamp"
	s.AdditionalPlace = "type:header:eventType"
	m, err := layout.Debezium(s)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := install(t, db, m)
	if err != nil {
		t.Fatal(err)
	}
	if !inst[0].Changed {
		t.Fatal("first install reports no change")
	}
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tbl := pgx.Identifier{db.Schema, "outboxevent"}.Sanitize()
	_, err = tx.Exec(ctx, `INSERT INTO `+tbl+` (id, aggregatetype, aggregateid, type, payload, timestamp, tracingspancontext)
		VALUES ('4d47e190-0402-4048-bc2c-89dd54343cdc', 'order', '1', 'OrderCreated', '{"id": 1}', '2019-05-03 13:31:34.484+00',
		E'#Fri May 03\ntraceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\ntracestate=rojo\\=00f067aa0ba902b7\n')`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM `+tbl); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got := messages(t, db)
	if len(got) != 1 {
		t.Fatalf("messages holds %d rows, want 1", len(got))
	}
	c := got[0]
	if c.Topic != "outbox.event.order" || string(c.Key) != "1" || string(c.Payload) != `{"id": 1}` {
		t.Errorf("copied as topic %q key %q payload %q", c.Topic, c.Key, c.Payload)
	}
	want := map[string]string{
		"id": "4d47e190-0402-4048-bc2c-89dd54343cdc", "eventType": "OrderCreated", layout.TimestampHeader: "1556890294484",
		"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "rojo=00f067aa0ba902b7",
	}
	if len(c.Headers) != len(want) {
		t.Errorf("headers %v, want %v", c.Headers, want)
	}
	for k, v := range want {
		if c.Headers[k] != v {
			t.Errorf("header %q = %q, want %q", k, c.Headers[k], v)
		}
	}
	if c.UUID != "4d47e190-0402-4048-bc2c-89dd54343cdc" {
		t.Errorf("uuid %s, want the event id", c.UUID)
	}

	// A second install finds everything in place and changes nothing.
	inst, err = install(t, db, m)
	if err != nil {
		t.Fatal(err)
	}
	if inst[0].Changed {
		t.Error("second install rewrote the function or the trigger")
	}
}

// Whatever the application writes, its INSERT succeeds; what cannot be a
// record is marked so that the relay escalates it with the reason.
func TestCopyNeverFailsTheInsert(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	table := debeziumTable(t, db, "outboxevent")
	s := debeziumDefaults(table)
	s.EventTimestamp = "timestamp"
	m, err := layout.Debezium(s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := install(t, db, m); err != nil {
		t.Fatal(err)
	}
	tbl := pgx.Identifier{db.Schema, "outboxevent"}.Sanitize()
	// Unbounded, as many applications' tables are.
	if _, err := db.Pool.Exec(context.Background(), `ALTER TABLE `+tbl+` ALTER COLUMN aggregatetype TYPE text, ALTER COLUMN aggregateid TYPE text`); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, values, topic string
		keyLen              int
	}{
		{"null aggregatetype", `(gen_random_uuid(), NULL, 'k', NULL, NULL, NULL)`, "outbox.event.(aggregatetype is null)", 1},
		{"long aggregatetype", `(gen_random_uuid(), repeat('x', 5000), 'k', '{}', 'infinity', NULL)`, "outbox.event." + strings.Repeat("x", 47) + "… (5013 bytes; Kafka allows 249)", 1},
		{"huge key", `(gen_random_uuid(), 'order', repeat(md5('a'), 200), '{}', NULL, NULL)`, "outbox.event.order", 6400},
		{"null key", `(gen_random_uuid(), 'order', NULL, 'null', '-infinity', 'garbage')`, "outbox.event.order", 0},
	}
	for _, c := range cases {
		if _, err := db.Pool.Exec(context.Background(), `INSERT INTO `+tbl+` (id, aggregatetype, aggregateid, payload, timestamp, tracingspancontext) VALUES `+c.values); err != nil {
			t.Fatalf("%s: the application's INSERT failed: %v", c.name, err)
		}
	}
	got := messages(t, db)
	if len(got) != len(cases) {
		t.Fatalf("%d rows copied, want %d", len(got), len(cases))
	}
	for i, c := range cases {
		if got[i].Topic != c.topic || len(got[i].Key) != c.keyLen {
			t.Errorf("%s: topic %q key of %d bytes, want %q and %d", c.name, got[i].Topic, len(got[i].Key), c.topic, c.keyLen)
		}
		if _, ok := got[i].Headers[layout.TimestampHeader]; ok {
			t.Errorf("%s: a timestamp header for no finite timestamp: %v", c.name, got[i].Headers)
		}
	}
}

// The application's role needs no grant on the outbox: the copy runs as
// the role that installed it.
func TestApplicationNeedsNoGrantOnTheOutbox(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	table := debeziumTable(t, db, "outboxevent")
	m, err := layout.Debezium(debeziumDefaults(table))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := install(t, db, m); err != nil {
		t.Fatal(err)
	}
	role := "app_" + db.Schema
	tbl := pgx.Identifier{db.Schema, "outboxevent"}.Sanitize()
	for _, q := range []string{
		"CREATE ROLE " + role + " NOLOGIN",
		"GRANT USAGE ON SCHEMA " + pgx.Identifier{db.Schema}.Sanitize() + " TO " + role,
		"GRANT INSERT, DELETE ON " + tbl + " TO " + role,
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_, _ = db.Pool.Exec(context.Background(), "DROP OWNED BY "+role)
		_, _ = db.Pool.Exec(context.Background(), "DROP ROLE "+role)
	})
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	// An idle relay, so the wake-up trigger on messages notifies too.
	if _, err := tx.Exec(ctx, `SELECT setval('relay_idle_until', 9e15::bigint)`); err != nil {
		t.Fatal(err)
	}
	// An application whose search_path does not hold the outbox.
	if _, err := tx.Exec(ctx, "SET LOCAL ROLE "+role+"; SET LOCAL search_path = pg_catalog"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+tbl+` (id, aggregatetype, aggregateid, payload) VALUES (gen_random_uuid(), 'order', '1', '{}')`); err != nil {
		t.Fatalf("insert as the application: %v", err)
	}
	if _, err := tx.Exec(ctx, `SELECT count(*) FROM `+pgx.Identifier{db.Schema, "messages"}.Sanitize()); err == nil {
		t.Error("the application's role can read the outbox")
	}
}

// Several relays starting at once install the trigger once and all start.
func TestConcurrentInstalls(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	table := debeziumTable(t, db, "outboxevent")
	m, err := layout.Debezium(debeziumDefaults(table))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			_, err := install(t, db, m)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if _, err := db.Pool.Exec(context.Background(), `INSERT INTO `+pgx.Identifier{db.Schema, "outboxevent"}.Sanitize()+` (id, aggregatetype, aggregateid, payload) VALUES (gen_random_uuid(), 'a', '1', '{}')`); err != nil {
		t.Fatal(err)
	}
	if n := len(messages(t, db)); n != 1 {
		t.Errorf("one insert made %d rows", n)
	}
}

// A mapping that does not fit its table is refused before anything is
// installed, naming the setting and the column.
func TestBadMappingsAreRefused(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	table := debeziumTable(t, db, "outboxevent")
	if _, err := db.Pool.Exec(context.Background(), `ALTER TABLE `+pgx.Identifier{db.Schema, "outboxevent"}.Sanitize()+` ADD COLUMN tags text[], ADD COLUMN blob bytea`); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		edit    func(*layout.DebeziumSettings)
		setting string
		column  string
	}{
		{"no such table", func(s *layout.DebeziumSettings) { s.Table = db.Schema + ".nope" }, "RELAY_DEBEZIUM_TABLE", ""},
		{"no such key column", func(s *layout.DebeziumSettings) { s.EventKey = "aggregate_id" }, "RELAY_DEBEZIUM_FIELD_EVENT_KEY", "aggregate_id"},
		{"no such route column", func(s *layout.DebeziumSettings) { s.RouteByField = "kind" }, "RELAY_DEBEZIUM_ROUTE_BY_FIELD", "kind"},
		{"array payload", func(s *layout.DebeziumSettings) { s.EventPayload = "tags" }, "RELAY_DEBEZIUM_FIELD_EVENT_PAYLOAD", "tags"},
		{"bytea header", func(s *layout.DebeziumSettings) { s.AdditionalPlace = "blob:header" }, "RELAY_DEBEZIUM_ADDITIONAL_PLACEMENT", "blob"},
		{"text timestamp", func(s *layout.DebeziumSettings) { s.EventTimestamp = "type" }, "RELAY_DEBEZIUM_FIELD_EVENT_TIMESTAMP", "type"},
		{"missing tracing column named", func(s *layout.DebeziumSettings) { s.TracingSpanColumn = "span" }, "RELAY_DEBEZIUM_TRACING_FIELD", "span"},
	}
	for _, c := range cases {
		s := debeziumDefaults(table)
		c.edit(&s)
		m, err := layout.Debezium(s)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		_, err = install(t, db, m)
		lerr, ok := errors.AsType[*layout.Error](err)
		if !ok {
			t.Errorf("%s: got %v, want a *layout.Error", c.name, err)
			continue
		}
		if lerr.Setting != c.setting || lerr.Column != c.column {
			t.Errorf("%s: error names %s column %q, want %s column %q: %v", c.name, lerr.Setting, lerr.Column, c.setting, c.column, err)
		}
		if !strings.Contains(err.Error(), c.setting) {
			t.Errorf("%s: message %q does not name %s", c.name, err, c.setting)
		}
	}
	var n int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_trigger WHERE tgrelid = $1::regclass`, table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("refused mappings left %d triggers", n)
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, schema, name string }{
		{"public.outboxevent", "public", "outboxevent"},
		{`"my.app"."Outbox"`, "my.app", "Outbox"},
		{`app."a""b"`, "app", `a"b`},
	} {
		got, err := layout.ParseTable(c.in)
		if err != nil || got.Schema != c.schema || got.Name != c.name {
			t.Errorf("ParseTable(%q) = %+v, %v", c.in, got, err)
		}
	}
	for _, bad := range []string{"outboxevent", "a.b.c", `"a.b`, ".x", "x."} {
		if _, err := layout.ParseTable(bad); err == nil {
			t.Errorf("ParseTable(%q) accepted", bad)
		}
	}
	tm, err := layout.ParseTemplate("orders.{aggregate_type}-v1", "S")
	if err != nil || len(tm.Parts) != 3 || tm.Parts[1].Column != "aggregate_type" {
		t.Errorf("ParseTemplate: %+v, %v", tm, err)
	}
	for _, bad := range []string{"", "orders/{x}", "{}", "a{b", "a}b", "o'{x}"} {
		if _, err := layout.ParseTemplate(bad, "S"); err == nil {
			t.Errorf("ParseTemplate(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"x:outbox-uuid", "x:a b", "a,a"} {
		if _, err := layout.ParseHeaders(bad, "S"); err == nil {
			t.Errorf("ParseHeaders(%q) accepted", bad)
		}
	}
	s := debeziumDefaults("a.b")
	for _, bad := range []string{"type:envelope", "type:partition", "type"} {
		s.AdditionalPlace = bad
		if _, err := layout.Debezium(s); err == nil || !strings.Contains(err.Error(), "RELAY_DEBEZIUM_ADDITIONAL_PLACEMENT") {
			t.Errorf("placement %q: %v", bad, err)
		}
	}
	s = debeziumDefaults("a.b")
	s.TopicReplacement = "events.$1"
	if _, err := layout.Debezium(s); err == nil || !strings.Contains(err.Error(), "RELAY_DEBEZIUM_ROUTE_TOPIC_REPLACEMENT") {
		t.Errorf("replacement without ${routedByValue}: %v", err)
	}
}

// A role that could install the trigger but not write the outbox is
// refused: its function would fail every application INSERT.
func TestInstallerWithoutInsertIsRefused(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	table := debeziumTable(t, db, "outboxevent")
	m, err := layout.Debezium(debeziumDefaults(table))
	if err != nil {
		t.Fatal(err)
	}
	role := "inst_" + db.Schema
	schema := pgx.Identifier{db.Schema}.Sanitize()
	for _, q := range []string{
		"CREATE ROLE " + role + " NOLOGIN",
		"GRANT USAGE, CREATE ON SCHEMA " + schema + " TO " + role,
		"GRANT TRIGGER ON " + pgx.Identifier{db.Schema, "outboxevent"}.Sanitize() + " TO " + role,
		"GRANT SELECT ON SEQUENCE " + schema + ".relay_idle_until TO " + role,
	} {
		if _, err := db.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		_, _ = db.Pool.Exec(context.Background(), "DROP OWNED BY "+role)
		_, _ = db.Pool.Exec(context.Background(), "DROP ROLE "+role)
	})
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET ROLE "+role); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = conn.Exec(ctx, "RESET ROLE") }()
	_, err = layout.Install(ctx, conn.Conn(), db.Schema, []layout.Mapping{m})
	lerr, ok := errors.AsType[*layout.Error](err)
	if !ok || lerr.Setting != "RELAY_DEBEZIUM_TABLE" || !strings.Contains(err.Error(), "lacks INSERT") {
		t.Fatalf("got %v, want a refusal naming RELAY_DEBEZIUM_TABLE", err)
	}
	if _, err := conn.Exec(ctx, "RESET ROLE"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO `+pgx.Identifier{db.Schema, "outboxevent"}.Sanitize()+` (id, aggregatetype, aggregateid, payload) VALUES (gen_random_uuid(), 'a', '1', '{}')`); err != nil {
		t.Fatalf("the application's INSERT after a refused install: %v", err)
	}
}
