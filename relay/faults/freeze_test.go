package faults

import (
	"context"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// Scenario 7: one of two relays freezes (SIGSTOP: a paused container, a
// stopped VM) with a batch claimed, for longer than its stall bound, while
// the load goes on. Its sockets stay open, so Postgres never sees it go; the
// stall bound ends its sessions. While it is still frozen, the other relay
// must deliver every row committed before the freeze, the frozen relay's
// batch included, and count itself alone; and the frozen relay's listener,
// whose backend blocks sending it notifications, must not pin the
// notification queue. Thawed, the relay finds its sessions gone and goes
// on.
func TestRelayFrozenWithABatchClaimed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := relaytest.NewDB(t)
	topics := []string{"orders", "payments"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()
	// Stall bound: 2 × the batch timeout (2 × 1s) + the topic check's 5s
	// + 2 × the poll interval (100ms): 9.2s.
	extra := []string{"RELAY_BATCH_SIZE", "30", "RELAY_PRODUCE_TIMEOUT", "1s"}
	steady := startRelay(t, "steady", relayEnv(db, relayDatabaseURL(t, db, ""), brokers, extra...))
	frozenApp := appName(db) + "-frozen"
	frozen := startRelay(t, "frozen", relayEnv(db, relayDatabaseURLAs(t, db, "", frozenApp), brokers, extra...))
	waitListening(t, db, 2)
	l := startLoad(t, db, topics, 4)

	// heldBatches counts the frozen relay's transactions that hold row
	// locks on the outbox.
	heldBatches := func() int {
		var n int
		err := db.Pool.QueryRow(ctx, `
			SELECT count(DISTINCT a.pid) FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid
			WHERE a.application_name = $1 AND a.state = 'idle in transaction'
			  AND l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock'`, frozenApp).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// slots counts the instance slots held on the outbox.
	slots := func() int {
		var n int
		err := db.Pool.QueryRow(ctx, `
			SELECT count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND granted AND objsubid = 2
			  AND classid = (SELECT oid FROM pg_namespace WHERE nspname = $1)`, db.Schema).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Freeze it at a moment it holds a batch: try until one is caught.
	caught := false
	for range 50 {
		pause(jitter(200 * time.Millisecond))
		frozen.freeze()
		if heldBatches() > 0 {
			caught = true
			break
		}
		frozen.thaw()
	}
	if !caught {
		frozen.thaw()
		t.Fatal("never caught the relay with a batch claimed")
	}
	frozeAt := time.Now()
	// Notifications the frozen relay's listener cannot read: 35 MB, more
	// than the sockets buffer, so that its backend blocks sending them and
	// pins the notification queue of the whole cluster.
	channel := relay.WakeupChannel(db.Schema)
	for range 10 {
		if _, err := db.Pool.Exec(ctx, `SELECT pg_notify($1, repeat('x', 7000) || g) FROM generate_series(1, 500) g`, channel); err != nil {
			t.Fatal(err)
		}
	}
	var lastBefore int64
	if err := db.Pool.QueryRow(ctx, `SELECT COALESCE(max(id), 0) FROM messages`).Scan(&lastBefore); err != nil {
		t.Fatal(err)
	}

	relaytest.WaitFor(t, time.Minute, "the steady relay to deliver every row committed before the freeze", func() bool {
		var pending int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM messages WHERE status = 'pending' AND id <= $1`, lastBefore).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		return pending == 0
	})
	relaytest.WaitFor(t, time.Minute, "the frozen relay's slot to be freed", func() bool { return slots() == 1 })
	relaytest.WaitFor(t, time.Minute, "the frozen relay's listener to be gone and the notification queue empty", func() bool {
		var listeners int
		var usage float64
		err := db.Pool.QueryRow(ctx, `
			SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query ILIKE 'LISTEN%'),
			       pg_notification_queue_usage()`, frozenApp).Scan(&listeners, &usage)
		if err != nil {
			t.Fatal(err)
		}
		return listeners == 0 && usage == 0
	})
	if held := heldBatches(); held != 0 {
		t.Errorf("the frozen relay still holds %d batches", held)
	}
	t.Logf("frozen for %v before its rows, slot and listener were free", time.Since(frozeAt).Round(time.Millisecond))

	frozen.thaw()
	relaytest.WaitFor(t, time.Minute, "the thawed relay to take a slot again", func() bool { return slots() == 2 })
	l.stop().check(t, brokers, 1, "SIGSTOP of one of two relays, past the stall bound")
	steady.stop()
	frozen.stop()
}
