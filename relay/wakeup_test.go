package relay_test

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/readback"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/retry"
)

// wakeupTopic is the topic the wake-up tests and benchmarks produce to.
const wakeupTopic = "wakeup"

// An hour-long poll interval means any row that arrives within seconds was
// delivered because of a NOTIFY (or the poll that follows a re-LISTEN), never
// because the fallback poll came round.
const wakeupNoPolling = time.Hour

// wakeupDeliveryTimeout is "a few seconds": far below wakeupNoPolling, and
// generous for a loaded CI machine running the suite with -race.
const wakeupDeliveryTimeout = 5 * time.Second

func TestWakeupDeliversWithoutPolling(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 3, wakeupTopic).ListenAddrs()
	pool, app := wakeupPool(t, db)
	startWakeupOnlyRelay(t, pool, brokers, db.Schema)
	consumer := newWakeupConsumer(t, brokers)

	waitListening(t, db, app)
	// Several rounds: the first row could in principle ride on the poll the
	// listener asks for right after its LISTEN; every later one can only
	// have been announced by the trigger.
	for i := 1; i <= 3; i++ {
		waitIdle(t, db)
		id := db.Insert(t, relaytest.Message{Topic: wakeupTopic, Key: []byte("k"), Payload: []byte("p")})[0]
		start := time.Now()
		waitDelivered(t, consumer, id)
		t.Logf("row %d delivered %v after commit", id, time.Since(start).Round(time.Millisecond))
		waitSent(t, db, i)
	}
}

func TestWakeupRelistensAfterListenerKilled(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 3, wakeupTopic).ListenAddrs()
	// The relay reaches Postgres through a proxy that can turn new
	// connections away, so the test decides how long the listener stays
	// down, and the row committed meanwhile has no listener to notify.
	pool, app := wakeupPool(t, db)
	proxy := newConnGate(t, pool.Config().ConnConfig.Host, pool.Config().ConnConfig.Port)
	pool = proxy.pool(t, pool)
	startWakeupOnlyRelay(t, pool, brokers, db.Schema)
	consumer := newWakeupConsumer(t, brokers)

	old := waitListening(t, db, app)
	waitIdle(t, db)
	proxy.refuseNew(true)
	var killed bool
	if err := db.Pool.QueryRow(context.Background(), `SELECT pg_terminate_backend($1)`, old).Scan(&killed); err != nil || !killed {
		t.Fatalf("terminate listener backend %d: %v, %v", old, killed, err)
	}
	relaytest.WaitFor(t, wakeupDeliveryTimeout, "the old LISTEN backend to exit", func() bool {
		return listenerPID(t, db, app) == 0
	})
	relaytest.WaitFor(t, wakeupDeliveryTimeout, "the listener to try to reconnect", func() bool {
		return proxy.refused.Load() > 0
	})
	// Nobody listens: this row's NOTIFY is lost. Only the full poll the
	// listener asks for after it reconnects can find it.
	gap := db.Insert(t, relaytest.Message{Topic: wakeupTopic, Key: []byte("gap"), Payload: []byte("p")})[0]
	proxy.refuseNew(false)
	relaytest.WaitFor(t, wakeupDeliveryTimeout, "a new LISTEN backend", func() bool {
		pid := listenerPID(t, db, app)
		return pid != 0 && pid != old
	})
	waitDelivered(t, consumer, gap)
	waitSent(t, db, 1)

	// And the new LISTEN hears the trigger.
	waitIdle(t, db)
	id := db.Insert(t, relaytest.Message{Topic: wakeupTopic, Key: []byte("after"), Payload: []byte("p")})[0]
	waitDelivered(t, consumer, id)
}

// connGate is a TCP proxy to Postgres that can turn new connections away
// while the ones it already carries keep working.
type connGate struct {
	ln      net.Listener
	target  string
	refuse  atomic.Bool
	refused atomic.Int64 // connections turned away
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
}

func newConnGate(t testing.TB, host string, port uint16) *connGate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("proxy: %v", err)
	}
	g := &connGate{ln: ln, target: net.JoinHostPort(host, strconv.Itoa(int(port)))}
	g.wg.Go(g.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		g.mu.Lock()
		for _, c := range g.conns {
			_ = c.Close()
		}
		g.mu.Unlock()
		g.wg.Wait()
	})
	return g
}

func (g *connGate) refuseNew(on bool) { g.refuse.Store(on) }

func (g *connGate) accept() {
	for {
		down, err := g.ln.Accept()
		if err != nil {
			return // closed
		}
		if g.refuse.Load() {
			g.refused.Add(1)
			_ = down.Close()
			continue
		}
		up, err := net.Dial("tcp", g.target)
		if err != nil {
			_ = down.Close()
			continue
		}
		g.mu.Lock()
		g.conns = append(g.conns, down, up)
		g.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
		}
		g.wg.Go(func() { pipe(up, down) })
		g.wg.Go(func() { pipe(down, up) })
	}
}

// pool returns a pool like p whose connections go through the gate; it
// closes p, whose only use was its configuration.
func (g *connGate) pool(t testing.TB, p *pgxpool.Pool) *pgxpool.Pool {
	t.Helper()
	cfg := p.Config()
	p.Close()
	addr := g.ln.Addr().(*net.TCPAddr)
	cfg.ConnConfig.Host = "127.0.0.1"
	cfg.ConnConfig.Port = uint16(addr.Port)
	cfg.ConnConfig.Fallbacks = nil
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// wakeupPool returns a pool on db's schema whose connections carry an
// application_name of their own. The relay's LISTEN connection copies the
// pool's settings, so a test can find (and kill) exactly its own listener
// even while other tests listen in the same database.
func wakeupPool(t testing.TB, db *relaytest.DB) (*pgxpool.Pool, string) {
	t.Helper()
	cfg, err := relay.PoolConfig(db.URL, db.Schema)
	if err != nil {
		t.Fatalf("pool config: %v", err)
	}
	app := "relay-" + db.Schema
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool, app
}

// startWakeupRelay runs a relay until the test ends. It does not use
// runRelay because benchmarks need it too (testing.TB).
func startWakeupRelay(t testing.TB, pool *pgxpool.Pool, brokers []string, cfg relay.Config) {
	t.Helper()
	relaytest.RunRelay(t, relay.New(cfg, pool, relaytest.NewProducer(t, brokers), testLogger(t)))
}

// startWakeupOnlyRelay runs a relay on schema that never polls
// (wakeupNoPolling) and retries fast, until the test ends: only a wake-up
// delivers a row within wakeupDeliveryTimeout.
func startWakeupOnlyRelay(t testing.TB, pool *pgxpool.Pool, brokers []string, schema string) {
	t.Helper()
	startWakeupRelay(t, pool, brokers, relay.Config{
		Schema:       schema,
		PollInterval: wakeupNoPolling,
		Retry:        retry.Policy{Base: 10 * time.Millisecond, Max: 100 * time.Millisecond},
	})
}

// newWakeupConsumer reads wakeupTopic from the start. Fetches are answered
// as soon as a record lands (kfake wakes waiting fetches on produce), so the
// time a record is polled is the time it became readable, give or take a
// scheduling delay.
func newWakeupConsumer(t testing.TB, brokers []string) *readback.Reader {
	t.Helper()
	rd, err := readback.New(brokers, []string{wakeupTopic}, kgo.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	t.Cleanup(rd.Close)
	return rd
}

// consumeIDs polls rd and calls seen with the outbox-id of every record and
// the time it was polled, until seen returns false or ctx ends.
func consumeIDs(ctx context.Context, rd *readback.Reader, seen func(id int64, at time.Time) bool) error {
	for {
		recs, err := rd.Poll(ctx)
		at := time.Now()
		if err != nil {
			return err
		}
		more := true
		for _, rec := range recs {
			id, err := readback.OutboxID(rec)
			if err != nil {
				return err
			}
			if more {
				more = seen(id, at)
			}
		}
		if !more {
			return nil
		}
	}
}

// waitDelivered consumes until the record of row id arrives.
func waitDelivered(t testing.TB, rd *readback.Reader, id int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wakeupDeliveryTimeout)
	defer cancel()
	err := consumeIDs(ctx, rd, func(got int64, _ time.Time) bool { return got != id })
	if err != nil {
		t.Fatalf("row %d not delivered within %v (poll interval %v, so only a wake-up could deliver it): %v",
			id, wakeupDeliveryTimeout, wakeupNoPolling, err)
	}
}

// waitIdle waits until a relay has registered itself for wake-ups.
func waitIdle(t testing.TB, db *relaytest.DB) {
	t.Helper()
	relaytest.WaitFor(t, 10*time.Second, "the relay to register for wake-ups", func() bool {
		var idle bool
		if err := db.Pool.QueryRow(context.Background(),
			`SELECT COALESCE(pg_sequence_last_value('relay_idle_until') > (extract(epoch FROM clock_timestamp()) * 1000)::bigint, false)`).Scan(&idle); err != nil {
			t.Fatalf("read idle registration: %v", err)
		}
		return idle
	})
}

// waitSent waits until n rows are marked sent: the batch transaction, which
// also ends the relay's idle registration, has committed.
func waitSent(t testing.TB, db *relaytest.DB, n int) {
	t.Helper()
	relaytest.WaitFor(t, 10*time.Second, strconv.Itoa(n)+" rows marked sent", func() bool {
		return db.Count(t, "sent") == n
	})
}

// waitListening waits until the relay's LISTEN connection (found by its
// application_name) is in place and returns its backend pid.
func waitListening(t testing.TB, db *relaytest.DB, app string) int32 {
	t.Helper()
	var pid int32
	relaytest.WaitFor(t, 10*time.Second, "the relay's LISTEN backend", func() bool {
		pid = listenerPID(t, db, app)
		return pid != 0
	})
	return pid
}

// listenerPID returns the pid of the backend of app whose last statement was
// a LISTEN, or 0.
func listenerPID(t testing.TB, db *relaytest.DB, app string) int32 {
	t.Helper()
	var pid int32
	err := db.Pool.QueryRow(context.Background(), `
		SELECT COALESCE(max(pid), 0) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1
		  AND query LIKE 'LISTEN %' AND state = 'idle'`, app).Scan(&pid)
	if err != nil {
		t.Fatalf("find listener: %v", err)
	}
	return pid
}

// A transaction that inserted before the relay registered as idle fired the
// trigger while no relay was registered, so it sends no NOTIFY; if it
// commits after the relay's one re-check, nothing wakes the relay.
//
// The relay covers it: right after registering it lists the transactions
// open then (by their transactionid locks) and looks again as each ends.
func TestWakeupAfterTransactionSpanningIdleRegistration(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 3, wakeupTopic).ListenAddrs()
	pool, app := wakeupPool(t, db)
	consumer := newWakeupConsumer(t, brokers)

	ctx := context.Background()
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	id := relaytest.InsertTx(t, tx, relaytest.Message{Topic: wakeupTopic, Key: []byte("k"), Payload: []byte("p")})[0]

	startWakeupOnlyRelay(t, pool, brokers, db.Schema)
	waitListening(t, db, app)
	waitIdle(t, db)
	waitRelayQuiet(t, db, app)

	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitDelivered(t, consumer, id)
}

// waitRelayQuiet waits until none of the relay's connections is running a
// statement or holding a transaction open: it has re-checked and sleeps.
func waitRelayQuiet(t testing.TB, db *relaytest.DB, app string) {
	t.Helper()
	relaytest.WaitFor(t, 10*time.Second, "the relay to go quiet", func() bool {
		// Quiet: nothing running, and a statement has ended since the
		// LISTEN, whose poke asks for a look.
		var quiet bool
		if err := db.Pool.QueryRow(context.Background(), `
			WITH a AS (SELECT * FROM pg_stat_activity WHERE application_name = $1)
			SELECT NOT EXISTS (SELECT 1 FROM a WHERE state <> 'idle')
			   AND EXISTS (SELECT 1 FROM a c, a l
			               WHERE l.query LIKE 'LISTEN %' AND c.pid <> l.pid
			                 AND c.state_change > l.state_change)`, app).Scan(&quiet); err != nil {
			t.Fatalf("relay activity: %v", err)
		}
		return quiet
	})
}
