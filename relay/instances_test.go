package relay_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/internal/pgstore"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// newCountingRelay returns a relay on db that recounts the instances every
// 20 ms, with a budget of budget batches in flight.
func newCountingRelay(t *testing.T, db *relaytest.DB, brokers []string, budget int) *relay.Relay {
	return relay.New(relay.Config{Schema: db.Schema, InFlightBatches: budget, PollInterval: 20 * time.Millisecond},
		db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
}

// waitInstances waits until r counts n instances and checks its share of
// the budget.
func waitInstances(t *testing.T, r *relay.Relay, who string, n, limit int) {
	t.Helper()
	relaytest.WaitFor(t, 10*time.Second, fmt.Sprintf("%s to count %d instances", who, n),
		func() bool { return r.Instances() == n })
	if got := r.InFlightLimit(); got != limit {
		t.Errorf("%s with %d instances keeps %d batches in flight, want %d", who, n, got, limit)
	}
}

func TestInstancesSplitTheInFlightBudget(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 1, "events").ListenAddrs()

	// A budget of 5: alone, a keeps all of it; the remainder goes to the
	// lowest slots, taken in the order the relays started.
	a := newCountingRelay(t, db, brokers, 5)
	relaytest.RunRelay(t, a)
	waitInstances(t, a, "relay a alone", 1, 5)

	b, c := newCountingRelay(t, db, brokers, 5), newCountingRelay(t, db, brokers, 5)
	stopB := relaytest.RunRelay(t, b)
	waitInstances(t, a, "relay a with b", 2, 3)
	waitInstances(t, b, "relay b with a", 2, 2)
	stopC := relaytest.RunRelay(t, c)
	waitInstances(t, a, "relay a with b and c", 3, 2)
	waitInstances(t, b, "relay b with a and c", 3, 2)
	waitInstances(t, c, "relay c with a and b", 3, 1)

	// A relay of another outbox, started now, counts only itself.
	other := relaytest.NewDB(t)
	d := newCountingRelay(t, other, brokers, 5)
	relaytest.RunRelay(t, d)
	waitInstances(t, d, "relay d on another schema", 1, 5)

	// Stopped relays let go of their slots: a has the budget back.
	stopB()
	waitInstances(t, c, "relay c after b stopped", 2, 2)
	stopC()
	waitInstances(t, a, "relay a after b and c stopped", 1, 5)
}

// With more relays than batches in the budget, the last is a standby: it
// claims nothing while the others run, and takes over when they are gone.
// Each relay produces to a broker of its own, so the broker a row reached
// tells which relay delivered it.
func TestStandbyClaimsNothingUntilTheActiveRelayIsGone(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokersA := relaytest.NewCluster(t, 1, "events").ListenAddrs()
	brokersB := relaytest.NewCluster(t, 1, "events").ListenAddrs()

	a := newCountingRelay(t, db, brokersA, 1)
	stopA := relaytest.RunRelay(t, a)
	waitInstances(t, a, "relay a", 1, 1)
	b := newCountingRelay(t, db, brokersB, 1)
	relaytest.RunRelay(t, b)
	waitInstances(t, b, "relay b", 2, 0)
	waitInstances(t, a, "relay a with b", 2, 1)

	// Rows in many small transactions, so that a standby that claimed
	// would get some of them.
	for i := range 40 {
		db.Insert(t, relaytest.Message{Topic: "events", Key: fmt.Appendf(nil, "k%d", i%7), Payload: []byte("x")})
	}
	relaytest.WaitFor(t, 10*time.Second, "every row sent", func() bool { return db.Count(t, "pending") == 0 })
	if n := relaytest.RecordsInTopics(t, brokersA, "events"); n != 40 {
		t.Errorf("relay a produced %d records, want 40", n)
	}
	if n := relaytest.RecordsInTopics(t, brokersB, "events"); n != 0 {
		t.Errorf("standby relay b produced %d records, want 0", n)
	}

	stopA()
	waitInstances(t, b, "relay b alone", 1, 1)
	db.Insert(t, relaytest.Message{Topic: "events", Key: []byte("k0"), Payload: []byte("after")})
	relaytest.WaitFor(t, 10*time.Second, "relay b to deliver the new row", func() bool {
		return relaytest.RecordsInTopics(t, brokersB, "events") == 1
	})
}

// A relay whose session ends (a database restart, a network cut, an
// operator's pg_terminate_backend) takes a slot again on a new one.
func TestInstanceTakesItsSlotAgainAfterItsSessionEnds(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 1, "events").ListenAddrs()
	a, b := newCountingRelay(t, db, brokers, 2), newCountingRelay(t, db, brokers, 2)
	relaytest.RunRelay(t, a)
	relaytest.RunRelay(t, b)
	waitInstances(t, a, "relay a", 2, 1)
	waitInstances(t, b, "relay b", 2, 1)

	ctx := context.Background()
	holders := func() []int32 {
		var pids []int32
		err := db.Pool.QueryRow(ctx, `
SELECT COALESCE(array_agg(pid ORDER BY pid), '{}') FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2
  AND classid = (SELECT oid FROM pg_namespace WHERE nspname = $1)`, db.Schema).Scan(&pids)
		if err != nil {
			t.Fatal(err)
		}
		return pids
	}
	before := holders()
	if len(before) != 2 {
		t.Fatalf("slot holders: %v, want two", before)
	}
	if _, err := db.Pool.Exec(ctx, `SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p`, before); err != nil {
		t.Fatal(err)
	}
	relaytest.WaitFor(t, 10*time.Second, "both relays to hold a slot on a new session", func() bool {
		after := holders()
		return len(after) == 2 && !slices.ContainsFunc(after, func(p int32) bool { return slices.Contains(before, p) })
	})
	waitInstances(t, a, "relay a", 2, 1)
	waitInstances(t, b, "relay b", 2, 1)
}

// TestSessionsCarryTheInstanceName checks that a relay's sessions are named
// "outbox-relay <instance>" in pg_stat_activity (the pool's, the LISTEN
// connection and the instance slot's), and that a name given in the
// database URL wins.
func TestSessionsCarryTheInstanceName(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 1, "events").ListenAddrs()
	ctx := context.Background()

	start := func(url, instance string) {
		poolCfg, err := relay.PoolConfig(url, db.Schema)
		if err != nil {
			t.Fatal(err)
		}
		pgstore.NameSessions(poolCfg, instance)
		pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		r := relay.New(relay.Config{Schema: db.Schema, Instance: instance, PollInterval: 20 * time.Millisecond},
			pool, relaytest.NewProducer(t, brokers), testLogger(t))
		relaytest.RunRelay(t, r)
	}
	sessions := func(name string) int {
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, name).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	instance := "named-" + db.Schema
	start(db.URL, instance)
	// The pool's connection that claims, the LISTEN session and the slot.
	relaytest.WaitFor(t, 10*time.Second, "three sessions named outbox-relay "+instance,
		func() bool { return sessions("outbox-relay "+instance) >= 3 })

	custom := "mine-" + db.Schema
	start(db.URL+"&application_name="+custom, "other-"+db.Schema)
	relaytest.WaitFor(t, 10*time.Second, "three sessions named by the URL",
		func() bool { return sessions(custom) >= 3 })
	if n := sessions("outbox-relay other-" + db.Schema); n != 0 {
		t.Errorf("%d sessions carry the default name although the URL names them", n)
	}
}
