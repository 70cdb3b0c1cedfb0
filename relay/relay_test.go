package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// runRelay starts a relay in the background and returns a function that
// stops it and waits for Run to return.
func runRelay(t *testing.T, db *relaytest.DB, brokers []string, cfg relay.Config) (stop func()) {
	t.Helper()
	cfg.Schema = db.Schema
	return relaytest.RunRelay(t, relay.New(cfg, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t)))
}

func TestDeliversRowsWithKeyPayloadHeadersAndOutboxID(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	topics := []string{"orders", "payments", "users"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()

	type sentRow struct {
		msg relaytest.Message
		id  int64
	}
	var want []sentRow
	for tx := 0; tx < 20; tx++ {
		var msgs []relaytest.Message
		for i := 0; i < 15; i++ {
			n := tx*15 + i
			msgs = append(msgs, relaytest.Message{
				Topic:   topics[n%3],
				Key:     []byte(fmt.Sprintf("key-%d", n%17)),
				Payload: []byte(fmt.Sprintf(`{"n":%d}`, n)),
				Headers: map[string]string{"type": "created", "n": strconv.Itoa(n)},
			})
		}
		for i, id := range db.Insert(t, msgs...) {
			want = append(want, sentRow{msgs[i], id})
		}
	}
	tombstone := relaytest.Message{Topic: "users", Key: []byte("deleted-user")}
	want = append(want, sentRow{tombstone, db.Insert(t, tombstone)[0]})
	keyless := relaytest.Message{Topic: "orders", Payload: []byte("no key")}
	want = append(want, sentRow{keyless, db.Insert(t, keyless)[0]})

	runRelay(t, db, brokers, relay.Config{})
	got := relaytest.Consume(t, brokers, len(want), 30*time.Second, topics...)
	if len(got) != len(want) {
		t.Fatalf("consumed %d records, want %d", len(got), len(want))
	}
	byID := map[int64]*kgo.Record{}
	for _, rec := range got {
		v, ok := relaytest.Header(rec, relay.HeaderOutboxID)
		if !ok {
			t.Fatalf("record at %s/%d@%d has no outbox-id header", rec.Topic, rec.Partition, rec.Offset)
		}
		id, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("outbox-id %q is not decimal: %v", v, err)
		}
		if _, dup := byID[id]; dup {
			t.Fatalf("outbox-id %d delivered twice", id)
		}
		byID[id] = rec
	}
	for _, w := range want {
		rec, ok := byID[w.id]
		if !ok {
			t.Fatalf("row %d never arrived", w.id)
		}
		if rec.Topic != w.msg.Topic || string(rec.Key) != string(w.msg.Key) {
			t.Errorf("row %d: got topic %q key %q, want %q %q", w.id, rec.Topic, rec.Key, w.msg.Topic, w.msg.Key)
		}
		if (rec.Key == nil) != (w.msg.Key == nil) {
			t.Errorf("row %d: key nil-ness %v, want %v", w.id, rec.Key == nil, w.msg.Key == nil)
		}
		if w.msg.Payload == nil {
			if rec.Value != nil {
				t.Errorf("row %d: NULL payload arrived as %q, want a tombstone (nil value)", w.id, rec.Value)
			}
		} else if string(rec.Value) != string(w.msg.Payload) {
			t.Errorf("row %d: payload %q, want %q", w.id, rec.Value, w.msg.Payload)
		}
		if len(rec.Headers) != len(w.msg.Headers)+2 {
			t.Errorf("row %d: %d headers, want %d (outbox-id, outbox-uuid and the row's)", w.id, len(rec.Headers), len(w.msg.Headers)+2)
		}
		for k, v := range w.msg.Headers {
			if got, _ := relaytest.Header(rec, k); got != v {
				t.Errorf("row %d: header %q = %q, want %q", w.id, k, got, v)
			}
		}
	}

	// Every row is marked sent with the partition and offset it landed at.
	// Kafka holds a batch's records before the relay commits them as sent.
	relaytest.WaitFor(t, 30*time.Second, "every row marked sent", func() bool { return db.Count(t, "sent") == len(want) })
	// Each record carries its row's uuid as outbox-uuid.
	rows, err := db.Pool.Query(context.Background(), `SELECT id, kafka_partition, kafka_offset, uuid::text FROM messages WHERE status = 'sent'`)
	if err != nil {
		t.Fatal(err)
	}
	marked := 0
	for rows.Next() {
		var id, off int64
		var p int32
		var uuid string
		if err := rows.Scan(&id, &p, &off, &uuid); err != nil {
			t.Fatal(err)
		}
		rec := byID[id]
		if rec == nil || rec.Partition != p || rec.Offset != off {
			t.Errorf("row %d marked at %d@%d, but its record is at %d@%d", id, p, off, rec.Partition, rec.Offset)
		}
		if got, _ := relaytest.Header(rec, relay.HeaderOutboxUUID); got != uuid {
			t.Errorf("row %d has uuid %s, its record outbox-uuid %q", id, uuid, got)
		}
		marked++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if marked != len(want) {
		t.Errorf("%d rows marked sent, want %d", marked, len(want))
	}
}
