package faults

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
)

// Scenario 1: the relay is killed with SIGKILL at random moments during the
// load and started again, several times. Whatever a killed relay had
// produced but not marked sent is produced again by the next one: a
// duplicate with the same outbox-id, never a loss or a reordering.
func TestKill9AtRandomMoments(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	topics := []string{"orders", "payments", "users"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()
	env := relayEnv(db, relayDatabaseURL(t, db, ""), brokers)

	p := startRelay(t, "relay-0", env)
	l := startLoad(t, db, topics, 4)
	kills := killRepeatedly(t, &p, "relay", 800*time.Millisecond, env)
	l.stop().check(t, brokers, kills, "SIGKILL and restart")
	p.stop()
}

// Scenario 6: two relays share the outbox while one of them is killed with
// SIGKILL over and over and restarted. The survivor takes over the rows the
// dead one had claimed (their locks die with its connections); per-key
// order holds across the two.
func TestTwoRelaysOneKilledRepeatedly(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	topics := []string{"orders", "payments"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()
	env := relayEnv(db, relayDatabaseURL(t, db, ""), brokers, "RELAY_BATCH_SIZE", "30")

	steady := startRelay(t, "steady", env)
	victim := startRelay(t, "victim-0", env)
	waitListening(t, db, 2)
	l := startLoad(t, db, topics, 4)
	kills := killRepeatedly(t, &victim, "victim", 700*time.Millisecond, env)
	l.stop().check(t, brokers, kills, "SIGKILL and restart of one of two relays")
	steady.stop()
	victim.stop()
}

// Scenario 9: rows with delivery options while the relay is killed with
// SIGKILL at random moments: some rows are delayed (deliver_after up to
// 1.5s ahead, holding back the later rows of their key), some expire far
// ahead, some expire within 300ms or had expired already. None is lost,
// per-key order holds across the delays and the kills, a row past its
// expires_at is escalated as expired (never produced), and no row is
// marked sent before its deliver_after.
func TestDelayedAndExpiringRowsAcrossKills(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	topics := []string{"orders", "payments"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()
	env := relayEnv(db, relayDatabaseURL(t, db, ""), brokers)

	p := startRelay(t, "relay-0", env)
	l := startMixedLoad(t, db, topics, 4, mix{options: true})
	kills := killRepeatedly(t, &p, "relay", 800*time.Millisecond, env)
	o := l.stop()
	o.check(t, brokers, kills, "SIGKILL and restart, rows delayed and expiring")
	var early, delayed int
	if err := db.Pool.QueryRow(context.Background(),
		`SELECT count(*) FILTER (WHERE sent_at < deliver_after), count(*) FROM messages WHERE status = 'sent' AND deliver_after IS NOT NULL`).
		Scan(&early, &delayed); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d delayed rows sent, %d expired rows escalated as they must be", delayed, len(o.expired))
	if early > 0 || delayed == 0 {
		t.Errorf("%d of %d delayed rows were marked sent before their deliver_after, want none of some", early, delayed)
	}
	p.stop()
}

// killRepeatedly kills *p with SIGKILL at a random moment (during start-up,
// a claim, a produce or a mark) up to within after the last start, and
// starts a relay named prefix-1, prefix-2, ... in its place, for the load's
// duration. It returns how many times it killed.
func killRepeatedly(t *testing.T, p **proc, prefix string, within time.Duration, env map[string]string) int {
	t.Helper()
	return runFor(t, loadDuration(t, 8*time.Second), 0, func(i int) {
		pause(jitter(within))
		(*p).kill9()
		*p = startRelay(t, fmt.Sprintf("%s-%d", prefix, i+1), env)
	})
}
