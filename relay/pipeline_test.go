package relay_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// claimProbe reads, without taking a lock, how many transactions hold
// claimed rows of a test's outbox and how many rows they hold.
//
// It must not lock rows itself. An earlier version of the pipelining test
// counted the rows it could lock with FOR UPDATE SKIP LOCKED; while it held
// them, a claim of the relay's skipped them and came back short (or empty),
// the relay took that for a drained backlog and waited for Kafka, which the
// test was holding: the test then timed out under -race, where the probe
// and the relay's first claims overlap more often.
type claimProbe struct {
	t    *testing.T
	conn *pgx.Conn
}

// newClaimProbe opens a connection of its own, so the probe never waits for
// a pool connection that the batches in flight hold.
func newClaimProbe(t *testing.T, db *relaytest.DB) *claimProbe {
	t.Helper()
	cfg, err := relay.PoolConfig(db.URL, db.Schema)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(context.Background(), cfg.ConnConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return &claimProbe{t: t, conn: conn}
}

// claimingTransactions counts the sessions holding the ROW SHARE lock on
// messages that a claim's FOR UPDATE takes, until its transaction ends.
func (p *claimProbe) claimingTransactions() int {
	var n int
	err := p.conn.QueryRow(context.Background(), `
SELECT count(DISTINCT pid) FROM pg_locks
WHERE locktype = 'relation' AND mode = 'RowShareLock' AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND relation = 'messages'::regclass`).Scan(&n)
	if err != nil {
		p.t.Fatalf("count claiming transactions: %v", err)
	}
	return n
}

// lockedRows counts pending rows whose xmax names a locker. In this test no
// claim has ended yet when it is called, so every such lock is live.
func (p *claimProbe) lockedRows() int {
	var n int
	err := p.conn.QueryRow(context.Background(),
		`SELECT count(*) FROM messages WHERE status = 'pending' AND xmax <> '0'::xid`).Scan(&n)
	if err != nil {
		p.t.Fatalf("count locked rows: %v", err)
	}
	return n
}

// TestClaimsNextBatchWhileKafkaAnswers checks the pipelining: while Kafka
// holds the first batch's produce, the relay claims the next batch, up to
// InFlightBatches of them. Without pipelining only one claim
// would be open.
func TestClaimsNextBatchWhileKafkaAnswers(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 3, "orders")

	// Hold every produce request until release is closed.
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		cluster.SleepControl(func() { <-release })
		return nil, nil, false
	})

	const batch, inFlight = 5, 3
	var msgs []relaytest.Message
	for i := range batch * (inFlight + 1) {
		msgs = append(msgs, relaytest.Message{Topic: "orders", Key: fmt.Appendf(nil, "k%d", i), Payload: []byte("x")})
	}
	db.Insert(t, msgs...)
	probe := newClaimProbe(t, db)
	runRelay(t, db, cluster.ListenAddrs(), relay.Config{BatchSize: batch, InFlightBatches: inFlight})
	t.Cleanup(open) // before the relay's stop: a failed test must not wait out the shutdown timeout

	// A claim holds its ROW SHARE lock from the start of its query, so
	// the third transaction shows before its rows are all locked.
	relaytest.WaitFor(t, 10*time.Second, "three batches claimed at once", func() bool {
		return probe.claimingTransactions() == inFlight && probe.lockedRows() == batch*inFlight
	})
	if n := db.Count(t, "sent"); n != 0 {
		t.Fatalf("%d rows sent while Kafka held every produce", n)
	}
	open()
	relaytest.WaitFor(t, 10*time.Second, "all rows sent", func() bool { return db.Count(t, "sent") == len(msgs) })
}

// TestClaimsAgainOnceKafkaAnsweredASmallBatch checks the early claim: once
// Kafka has answered a small batch, the relay claims what arrived meanwhile
// without waiting for that batch's mark and commit. Here the first batch's
// mark is held (a trigger waits for an advisory lock the test holds); the
// row inserted while Kafka held the first batch must still go out and be
// marked sent before the first row is. A loop that claims only after the
// commit would send nothing more.
func TestClaimsAgainOnceKafkaAnsweredASmallBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 3, "orders")
	first := db.Insert(t, relaytest.Message{Topic: "orders", Key: []byte("a"), Payload: []byte("1")})[0]

	// The mark of the first row waits for lockKey, which the test holds.
	probe := newClaimProbe(t, db)
	var lockKey int64
	if err := probe.conn.QueryRow(ctx, `SELECT hashtext(current_schema())::bigint`).Scan(&lockKey); err != nil {
		t.Fatal(err)
	}
	if _, err := probe.conn.Exec(ctx, fmt.Sprintf(`
CREATE FUNCTION hold_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(%d);
    RETURN NEW;
END $$;
CREATE TRIGGER hold_mark BEFORE UPDATE ON messages
    FOR EACH ROW WHEN (OLD.id = %d) EXECUTE FUNCTION hold_mark();
SELECT pg_advisory_lock(%d);`, lockKey, first, lockKey)); err != nil {
		t.Fatal(err)
	}
	var unlockOnce sync.Once
	unlock := func() {
		unlockOnce.Do(func() {
			if _, err := probe.conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, lockKey); err != nil {
				t.Errorf("unlock: %v", err)
			}
		})
	}

	// Kafka holds the first produce request until the second row is in.
	// (kfake runs the control function for any other produce request that
	// comes in while this one sleeps: that one waits too.)
	arrived, release := make(chan struct{}), make(chan struct{})
	var arrivedOnce, releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		arrivedOnce.Do(func() { close(arrived) })
		cluster.SleepControl(func() { <-release })
		return nil, nil, false
	})

	runRelay(t, db, cluster.ListenAddrs(), relay.Config{BatchSize: 100, InFlightBatches: 2})
	// Cleanups run last first: free Kafka and the mark before the relay stops.
	t.Cleanup(open)
	t.Cleanup(unlock)

	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the first row was never produced")
	}
	second := db.Insert(t, relaytest.Message{Topic: "orders", Key: []byte("b"), Payload: []byte("2")})[0]
	open()

	status := func(id int64) string {
		var s string
		if err := db.Pool.QueryRow(ctx, `SELECT status FROM messages WHERE id = $1`, id).Scan(&s); err != nil {
			t.Fatalf("status of %d: %v", id, err)
		}
		return s
	}
	relaytest.WaitFor(t, 10*time.Second, "the second row sent while the first batch's mark waits", func() bool {
		return status(second) == "sent"
	})
	if s := status(first); s != "pending" {
		t.Fatalf("first row %s before its mark was let through", s)
	}
	unlock()
	relaytest.WaitFor(t, 10*time.Second, "the first row sent", func() bool { return status(first) == "sent" })
}
