// Package relaytest starts the real components the relay's tests need: a
// migrated outbox schema of its own in the test Postgres, a kfake broker,
// and the relay binary built once per test run. It also holds the checker
// of what reached Kafka (CheckRecords, over readback's consumer and
// checker, which relay bench uses too), so that the end-to-end tests and
// the fault suite hold the relay to the same guarantees. Tests fail, never
// skip, when Postgres is unreachable.
package relaytest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/readback"
	"github.com/outboxrelay/relay/relay"
)

// DefaultDatabaseURL is the development and CI Postgres.
const DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// DatabaseURL is RELAY_TEST_DATABASE_URL, or DefaultDatabaseURL.
func DatabaseURL() string {
	if u := os.Getenv("RELAY_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultDatabaseURL
}

// DB is one test's outbox: a schema of its own, migrated, and a pool whose
// search_path points at it.
type DB struct {
	Schema string
	Pool   *pgxpool.Pool
	URL    string
}

// NewDB creates a fresh schema in the test Postgres, migrates it and drops
// it when the test ends.
func NewDB(t testing.TB) *DB {
	t.Helper()
	return NewDBAt(t, DatabaseURL())
}

// NewDBAt is NewDB on the Postgres at url.
func NewDBAt(t testing.TB, url string) *DB {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	return newDB(t, url, "test_"+hex.EncodeToString(b[:]))
}

// NewDBWithSchema is NewDB with a schema name of the caller's choice, which
// must be unique to the test (e.g. end in a random suffix).
func NewDBWithSchema(t testing.TB, schema string) *DB {
	t.Helper()
	return newDB(t, DatabaseURL(), schema)
}

func newDB(t testing.TB, url, schema string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	cfg, err := relay.PoolConfig(url, schema)
	if err != nil {
		t.Fatalf("pool config: %v", err)
	}
	m, err := relay.NewMigrator(ctx, cfg, schema)
	if err != nil {
		t.Fatalf("cannot reach the test Postgres at %s (start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start): %v", url, err)
	}
	t.Cleanup(func() {
		// Runs after the pool's cleanup (LIFO), so no connection holds the schema.
		conn, err := pgx.Connect(context.Background(), url)
		if err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	if _, err := m.Up(ctx); err != nil {
		_ = m.Close()
		t.Fatalf("migrate: %v", err)
	}
	_ = m.Close()

	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return &DB{Schema: schema, Pool: pool, URL: url}
}

// Message is a row to insert into the outbox.
type Message struct {
	Topic   string
	Key     []byte
	Payload []byte
	Headers map[string]string
}

// Insert writes msgs in one transaction, as an application would, and
// returns their ids.
func (db *DB) Insert(t testing.TB, msgs ...Message) []int64 {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	ids := InsertTx(t, tx, msgs...)
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	return ids
}

// InsertTx writes msgs inside tx and returns their ids.
func InsertTx(t testing.TB, tx pgx.Tx, msgs ...Message) []int64 {
	t.Helper()
	ids := make([]int64, 0, len(msgs))
	for _, m := range msgs {
		headers := m.Headers
		if headers == nil {
			headers = map[string]string{}
		}
		var id int64
		err := tx.QueryRow(context.Background(),
			`INSERT INTO messages (topic, key, payload, headers) VALUES ($1, $2, $3, $4) RETURNING id`,
			m.Topic, m.Key, m.Payload, headers).Scan(&id)
		if err != nil {
			t.Fatalf("insert: %v", err)
		}
		ids = append(ids, id)
	}
	return ids
}

// Count returns the number of rows in the outbox with the given status.
func (db *DB) Count(t testing.TB, status string) int {
	t.Helper()
	var n int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM messages WHERE status = $1`, status).Scan(&n); err != nil {
		t.Fatalf("count: %v", err)
	}
	return n
}

// NewCluster starts an in-process kfake broker with the topics given, each
// with the given number of partitions, and stops it when the test ends.
func NewCluster(t testing.TB, partitions int32, topics ...string) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topics...))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// NewProducer returns a relay Kafka client for the cluster, closed when the
// test ends.
func NewProducer(t testing.TB, brokers []string, extra ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := relay.NewKafkaClient(brokers, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// NewClient returns a plain franz-go client of brokers with opts, not the
// relay's: an admin's, a verifier's or a consumer's. It is closed when the
// test ends.
func NewClient(t testing.TB, brokers []string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl := dial(t, brokers, opts...)
	t.Cleanup(cl.Close)
	return cl
}

// dial returns a plain client of brokers with opts, for the caller to
// close: helpers that tests call in a loop must not keep one per call.
func dial(t testing.TB, brokers []string, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(brokers...))...)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// DeleteRecords removes the records of topic's partition below offset
// below, as retention (or an operator's DeleteRecords) does.
func DeleteRecords(t testing.TB, brokers []string, topic string, partition int32, below int64) {
	t.Helper()
	var offs kadm.Offsets
	offs.Add(kadm.Offset{Topic: topic, Partition: partition, At: below})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl := dial(t, brokers)
	defer cl.Close()
	resp, err := kadm.NewClient(cl).DeleteRecords(ctx, offs)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("delete records of %s/%d below offset %d: %v", topic, partition, below, err)
	}
}

// Consume reads topics from the start until it has want records or the
// deadline passes, and returns what it read. It fails the test on timeout.
func Consume(t testing.TB, brokers []string, want int, timeout time.Duration, topics ...string) []*kgo.Record {
	t.Helper()
	return ConsumeUntil(t, brokers, timeout, fmt.Sprintf("%d records", want),
		func(recs []*kgo.Record) bool { return len(recs) >= want }, topics...)
}

// ConsumeUntil reads topics from the start until done, asked before every
// fetch with the records read so far, is true, and returns them. It fails
// the test if that takes longer than timeout, saying it waited for what.
func ConsumeUntil(t testing.TB, brokers []string, timeout time.Duration, what string, done func([]*kgo.Record) bool, topics ...string) []*kgo.Record {
	t.Helper()
	rd, err := readback.New(brokers, topics)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	defer rd.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []*kgo.Record
	err = rd.Read(ctx, func(r *kgo.Record) { out = append(out, r) }, func() bool { return done(out) })
	if ctx.Err() != nil {
		t.Fatalf("consumed %d records from %v within %v, waiting for %s", len(out), topics, timeout, what)
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Header returns the value of the named header, and whether it is present.
func Header(r *kgo.Record, name string) (string, bool) { return readback.Header(r, name) }

// WaitFor polls cond every few milliseconds until it is true, failing the
// test with what after timeout. It is for conditions observed in the
// database or the broker, which offer no signal to wait on.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// RecordsInTopics counts the records Kafka holds in topics.
func RecordsInTopics(t testing.TB, brokers []string, topics ...string) int64 {
	t.Helper()
	cl := dial(t, brokers)
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, topics...)
	if err != nil {
		t.Fatal(err)
	}
	starts, err := adm.ListStartOffsets(ctx, topics...)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			t.Fatalf("end offset %s/%d: %v", o.Topic, o.Partition, o.Err)
		}
		s, _ := starts.Lookup(o.Topic, o.Partition)
		n += o.Offset - s.Offset
	})
	return n
}

// RunRelay runs r in the background until the returned stop is called or
// the test ends; stop waits for Run to return and reports its error.
func RunRelay(t testing.TB, r *relay.Relay) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("relay Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// Deliver inserts msgs and runs a relay until every row is sent, then
// stops it. It returns the rows' ids.
func Deliver(t testing.TB, db *DB, brokers []string, msgs ...Message) []int64 {
	t.Helper()
	ids := db.Insert(t, msgs...)
	stop := RunRelay(t, relay.New(relay.Config{Schema: db.Schema, BatchSize: 50}, db.Pool, NewProducer(t, brokers), nil))
	WaitFor(t, 30*time.Second, "every row sent", func() bool { return db.Count(t, "pending") == 0 })
	stop()
	return ids
}
