package faults

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
)

// Scenario 3: the network between the relay and Postgres is cut and healed
// through a proxy (connections closed and refused, answers black-holed
// until the connection times out, connections reset as soon as the relay
// sends), and the relay's backends, the LISTEN connection among them, are
// terminated with pg_terminate_backend. The application keeps writing
// through its own connections all along. A batch whose commit is cut off
// is produced again (a duplicate); one whose commit went through but whose
// answer was lost is already sent.
func TestPostgresNetworkCutAndBackendsTerminated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := relaytest.NewDB(t)
	topics := []string{"orders", "payments", "users"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()

	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatalf("database url: %v", err)
	}
	net, err := newNetFault(t, "postgres", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	// The relay's connections carry an application_name of their own, so
	// the test finds its backends, and only them.
	app := appName(db)
	p := startRelay(t, "relay", relayEnv(db, relayDatabaseURL(t, db, net.addr()), brokers))
	// A relay that cannot reach Postgres at start exits 1 (its
	// orchestrator restarts it); the faults begin once it runs.
	waitListening(t, db, 1)
	l := startLoad(t, db, topics, 4)
	var faults faultCounter
	listenKilled := 0
	runFor(t, loadDuration(t, 10*time.Second), jitter(600*time.Millisecond), func(i int) {
		switch i % 4 {
		case 0, 1, 2:
			net.injectCut(i%4, &faults)
		case 3:
			faults.add("pg_terminate_backend of every relay backend")
			// Once its LISTEN is back from the cuts before (its reconnect
			// backs off while they last), so the termination reaches it.
			waitListening(t, db, 1)
			var listening bool
			if err := db.Pool.QueryRow(ctx, `
				SELECT count(*) FILTER (WHERE query ILIKE 'LISTEN%') > 0
				FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&listening); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := db.Pool.QueryRow(ctx, `
				SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE application_name = $1 AND pid <> pg_backend_pid()`, app).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if listening && n > 0 {
				listenKilled++
			}
		}
		p.checkAlive()
	})
	o := l.stop()
	if listenKilled == 0 && !t.Failed() {
		t.Errorf("the LISTEN connection was never among the terminated backends")
	}
	t.Logf("terminations that included the LISTEN connection: %d", listenKilled)
	// Notifications sent while it was away are lost, so the relay must
	// LISTEN again (and poll meanwhile): the wake-up is back.
	waitListening(t, db, 1)
	o.check(t, brokers, faults.total(), faults.String())
	p.stop()
}
