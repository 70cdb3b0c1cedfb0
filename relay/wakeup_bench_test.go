package relay_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// The insert-rate benchmark: how much of an application's single-row insert
// rate does the wake-up trigger cost? Run it alone:
//
//	go test ./relay -run '^$' -bench BenchmarkWakeupInsertRate -benchtime 1x
//
// It measures three outboxes, each in its own schema with its own relay
// delivering to kfake while the writers insert:
//
//	baseline   the wake-up trigger dropped; relay with wake-up off
//	wakeup     the schema as shipped; relay with wake-up on (the default)
//	notifyall  a trigger that notifies on every statement; relay with
//	           wake-up on — the design the idle registration avoids
//
// The variants take turns in short phases, baseline and wakeup always next
// to each other (ABC, BAC, ABC, …), so a noisy neighbour or a checkpoint
// hurts both alike: on a shared 2-core machine single phases vary by ±30%.
// "ratio" is the median over rounds of wakeup/baseline from the same round;
// the requirement is ratio ≥ 0.9. Between phases the relay drains the
// outbox; "max drain" is the longest that took, so a lost wake-up shows up
// as a drain of about the poll interval.
//
// When Postgres runs on this machine the benchmark also reads the CPU time
// of each backend (/proc/<pid>/schedstat): the writers' backend CPU per row
// is what the trigger costs an application, measured without the noise
// that throughput picks up from other processes.
//
// b.N is ignored: one invocation is one full measurement.
const (
	insertRateWriters = 8                      // concurrent application transactions
	insertRateRounds  = 15                     // phases per variant; medians over these
	insertRateWarmup  = 100 * time.Millisecond // the relay has woken up
	insertRatePhase   = 600 * time.Millisecond
)

// notifyAllTrigger replaces the shipped trigger by the naive design: one
// pg_notify per INSERT statement, whether or not any relay is idle.
const notifyAllTrigger = `
DROP TRIGGER messages_wakeup ON messages;
CREATE FUNCTION notify_every_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_wakeup', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER messages_notify_all AFTER INSERT ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION notify_every_insert();`

type insertRateVariant struct {
	name     string
	setup    string // SQL run on the fresh schema
	cfg      relay.Config
	db       *relaytest.DB
	app      string // application_name of the relay's connections
	writers  []*pgxpool.Conn
	notify   *notifyCounter // nil: not counted
	rates    []float64      // rows/s, one per round
	notes    []float64      // notifications per committed row, one per round
	rows     int64          // committed by the writers, warm-ups included
	maxDrain time.Duration

	writerPIDs []int32
	cpu        backendCPU // at the start
}

func BenchmarkWakeupInsertRate(b *testing.B) {
	// The baseline relay polls every 50ms rather than the default 500ms so
	// that, like the woken wakeup relay, it is delivering within the
	// warm-up of each phase: both variants carry a working relay.
	base := &insertRateVariant{name: "baseline", setup: `DROP TRIGGER messages_wakeup ON messages`,
		cfg: relay.Config{DisableWakeup: true, PollInterval: 50 * time.Millisecond}}
	wakeup := &insertRateVariant{name: "wakeup"}
	notifyAll := &insertRateVariant{name: "notifyall", setup: notifyAllTrigger}
	variants := []*insertRateVariant{base, wakeup, notifyAll}

	brokers := relaytest.NewCluster(b, 3, wakeupTopic).ListenAddrs()
	for _, v := range variants {
		v.db = relaytest.NewDB(b)
		if v.setup != "" {
			if _, err := v.db.Pool.Exec(context.Background(), v.setup); err != nil {
				b.Fatalf("%s setup: %v", v.name, err)
			}
		}
		v.writers = writerConns(b, v.db, insertRateWriters)
		v.writerPIDs = backendPIDs(b, v.writers)
		if v != base {
			v.notify = countNotifications(b, v.db)
		}
		v.cfg.Schema = v.db.Schema
		var pool *pgxpool.Pool
		pool, v.app = wakeupPool(b, v.db)
		startWakeupRelay(b, pool, brokers, v.cfg)
	}
	for _, v := range variants {
		v.cpu = readBackendCPU(b, v)
	}

	b.ResetTimer()
	for round := range insertRateRounds {
		order := []*insertRateVariant{base, wakeup, notifyAll}
		if round%2 == 1 {
			order = []*insertRateVariant{wakeup, base, notifyAll}
		}
		for _, v := range order {
			var before int64
			if v.notify != nil {
				before = v.notify.n.Load()
			}
			rate, rows := insertPhase(b, v)
			v.rates = append(v.rates, rate)
			v.rows += rows
			// Let the relay catch up so the next phase starts from an
			// empty outbox and an idle relay, whatever the variant.
			drainStart := time.Now()
			relaytest.WaitFor(b, time.Minute, v.name+" relay to drain", func() bool {
				return v.db.Count(b, "pending") == 0
			})
			v.maxDrain = max(v.maxDrain, time.Since(drainStart))
			if v.notify != nil {
				v.notes = append(v.notes, float64(v.notify.n.Load()-before)/float64(rows))
			}
		}
	}
	b.StopTimer()

	var tbl strings.Builder
	fmt.Fprintf(&tbl, "%d writers, single-row transactions, %d rounds of %v phases (after %v warm-up)\n",
		insertRateWriters, insertRateRounds, insertRatePhase, insertRateWarmup)
	fmt.Fprintf(&tbl, "%-10s %7s %6s %8s %8s %7s %7s %6s %6s   %s\n",
		"", "rows/s", "ratio", "ratio of", "notifies", "writer", "relay", "rows/", "max", "rows/s")
	fmt.Fprintf(&tbl, "%-10s %7s %6s %8s %8s %7s %7s %6s %6s   %s\n",
		"variant", "median", "median", "medians", "per row", "µs/row", "µs/row", "batch", "drain", "per round")
	for _, v := range variants {
		ratios := make([]float64, insertRateRounds)
		for i := range ratios {
			ratios[i] = v.rates[i] / base.rates[i]
		}
		perRound := make([]string, len(v.rates))
		for i, r := range v.rates {
			perRound[i] = strconv.Itoa(int(r))
		}
		notes := "-"
		if v.notify != nil {
			notes = strconv.FormatFloat(median(v.notes), 'f', 4, 64)
		}
		writerCPU, relayCPU := "-", "-"
		if w, r, ok := v.cpuPerRow(b); ok {
			writerCPU, relayCPU = strconv.FormatFloat(w, 'f', 0, 64), strconv.FormatFloat(r, 'f', 0, 64)
			b.ReportMetric(w, v.name+"-writer-cpu-us/row")
		}
		fmt.Fprintf(&tbl, "%-10s %7.0f %6.3f %8.3f %8s %7s %7s %6.1f %6v   %s\n", v.name, median(v.rates), median(ratios),
			median(v.rates)/median(base.rates), notes, writerCPU, relayCPU, rowsPerBatch(b, v.db),
			v.maxDrain.Round(time.Millisecond), strings.Join(perRound, " "))
		b.ReportMetric(median(v.rates), v.name+"-rows/s")
		switch v {
		case wakeup:
			b.ReportMetric(median(ratios), "ratio")
			b.ReportMetric(median(v.notes), "notifies/row")
		case notifyAll:
			b.ReportMetric(median(ratios), "notifyall-ratio")
		}
	}
	b.Log("\n" + tbl.String())
}

// backendCPU is the CPU time each Postgres backend has used, by pid.
type backendCPU map[int32]time.Duration

// readBackendCPU reads the CPU time of v's writer backends and of its
// relay's backends (found by application_name). It is empty when the
// backends are not processes of this machine.
func readBackendCPU(b *testing.B, v *insertRateVariant) backendCPU {
	rows, err := v.db.Pool.Query(context.Background(),
		`SELECT pid FROM pg_stat_activity WHERE application_name = $1`, v.app)
	if err != nil {
		b.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		b.Fatal(err)
	}
	out := backendCPU{}
	for _, pid := range append(pids, v.writerPIDs...) {
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil || !strings.HasPrefix(string(comm), "postgres") {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(raw))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		out[pid] = time.Duration(ns)
	}
	return out
}

// cpuPerRow returns the CPU time the writers' backends and the relay's
// backends spent per committed row since the start, in microseconds.
func (v *insertRateVariant) cpuPerRow(b *testing.B) (writer, relay float64, ok bool) {
	now := readBackendCPU(b, v)
	writers := map[int32]bool{}
	for _, pid := range v.writerPIDs {
		writers[pid] = true
	}
	var w, r time.Duration
	for pid, d := range now {
		d -= v.cpu[pid] // zero for relay connections opened since
		if writers[pid] {
			w += d
		} else {
			r += d
		}
	}
	if w == 0 || v.rows == 0 {
		return 0, 0, false
	}
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(v.rows) }
	return us(w), us(r), true
}

// rowsPerBatch is the mean number of rows the relay produced per claim
// transaction: a batch marks all its rows with the same sent_at.
func rowsPerBatch(b *testing.B, db *relaytest.DB) float64 {
	var rows, batches int64
	if err := db.Pool.QueryRow(context.Background(),
		`SELECT count(*), count(DISTINCT sent_at) FROM messages WHERE status = 'sent'`).Scan(&rows, &batches); err != nil {
		b.Fatalf("rows per batch: %v", err)
	}
	if batches == 0 {
		return 0
	}
	return float64(rows) / float64(batches)
}

// backendPIDs returns the backend pid of each connection.
func backendPIDs(b *testing.B, conns []*pgxpool.Conn) []int32 {
	pids := make([]int32, len(conns))
	for i, c := range conns {
		if err := c.QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&pids[i]); err != nil {
			b.Fatal(err)
		}
	}
	return pids
}

// insertPhase runs the writers against v for the warm-up and the phase. It
// returns the rate of committed rows during the phase and how many rows the
// writers committed in all.
func insertPhase(b *testing.B, v *insertRateVariant) (float64, int64) {
	var (
		committed atomic.Int64
		stop      atomic.Bool
		wg        sync.WaitGroup
		errs      = make(chan error, len(v.writers))
	)
	for w, conn := range v.writers {
		wg.Go(func() {
			// Writers use a background context and a stop flag: cancelling
			// a query makes pgx close the connection, and these live
			// across phases.
			ctx := context.Background()
			payload := []byte(`{"event":"order_created","amount":4200}`)
			for n := 0; !stop.Load(); n++ {
				// Many aggregates, as in an application: the relay
				// claims one row per key per batch, so a handful of hot
				// keys would measure its per-key ordering instead.
				key := []byte("order-" + strconv.Itoa(w) + "-" + strconv.Itoa(n))
				tx, err := conn.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				if _, err := tx.Exec(ctx, `INSERT INTO messages (topic, key, payload) VALUES ($1, $2, $3)`,
					wakeupTopic, key, payload); err != nil {
					_ = tx.Rollback(ctx)
					errs <- err
					return
				}
				if err := tx.Commit(ctx); err != nil {
					errs <- err
					return
				}
				committed.Add(1)
			}
		})
	}
	<-time.After(insertRateWarmup)
	n0, t0 := committed.Load(), time.Now()
	<-time.After(insertRatePhase)
	n1, t1 := committed.Load(), time.Now()
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("%s writer: %v", v.name, err)
	}
	return float64(n1-n0) / t1.Sub(t0).Seconds(), committed.Load()
}

// writerConns holds n connections on db's schema, one per writer, for the
// whole benchmark, so no phase pays for connecting.
func writerConns(b *testing.B, db *relaytest.DB, n int) []*pgxpool.Conn {
	cfg, err := relay.PoolConfig(db.URL, db.Schema)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = int32(n)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	conns := make([]*pgxpool.Conn, n)
	for i := range conns {
		if conns[i], err = pool.Acquire(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(conns[i].Release)
	}
	return conns
}

// notifyCounter counts the notifications on a schema's wake-up channel:
// how many inserting transactions paid for a pg_notify.
type notifyCounter struct{ n atomic.Int64 }

func countNotifications(b *testing.B, db *relaytest.DB) *notifyCounter {
	conn, err := pgx.Connect(context.Background(), db.URL)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Exec(context.Background(), "LISTEN "+pgx.Identifier{relay.WakeupChannel(db.Schema)}.Sanitize()); err != nil {
		b.Fatal(err)
	}
	c := &notifyCounter{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := conn.WaitForNotification(ctx); err != nil {
				return
			}
			c.n.Add(1)
		}
	}()
	b.Cleanup(func() {
		cancel()
		<-done
		_ = conn.Close(context.Background())
	})
	return c
}

// The latency benchmark: commit → consume time per row with a paced writer,
// with wake-up on and off (the relay's default 500ms poll interval).
//
//	go test ./relay -run '^$' -bench BenchmarkWakeupLatency -benchtime 1x
const (
	latencyDuration = 3 * time.Second
	latencyWarmup   = 300 * time.Millisecond // rows of this first stretch are left out
	latencyWriters  = 4                      // enough that a slow commit does not delay the schedule
)

func BenchmarkWakeupLatency(b *testing.B) {
	for _, rate := range []int{1000, 100} {
		for _, wakeup := range []bool{true, false} {
			name := fmt.Sprintf("rate=%d/wakeup=%s", rate, map[bool]string{true: "on", false: "off"}[wakeup])
			b.Run(name, func(b *testing.B) {
				benchLatency(b, rate, relay.Config{DisableWakeup: !wakeup})
			})
		}
	}
}

func benchLatency(b *testing.B, rate int, cfg relay.Config) {
	db := relaytest.NewDB(b)
	brokers := relaytest.NewCluster(b, 3, wakeupTopic).ListenAddrs()
	cfg.Schema = db.Schema
	startWakeupRelay(b, db.Pool, brokers, cfg)
	consumer := newWakeupConsumer(b, brokers)
	writers := writerConns(b, db, latencyWriters)
	notify := countNotifications(b, db)
	total := rate * int(latencyDuration/time.Second)
	warmup := rate * int(latencyWarmup/time.Millisecond) / 1000

	// Ids come from a fresh identity column, so they are 1..total; each
	// slot is written by exactly one goroutine.
	committed := make([]time.Time, total+1)
	consumed := make([]time.Time, total+1)

	b.ResetTimer()
	consumeErr := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), latencyDuration+time.Minute)
		defer cancel()
		left := total
		consumeErr <- consumeIDs(ctx, consumer, func(id int64, at time.Time) bool {
			if id >= 1 && id <= int64(total) && consumed[id].IsZero() {
				consumed[id] = at
				left--
			}
			return left > 0
		})
	}()

	// One schedule, several writers: row i is due at start + i/rate, and
	// whichever writer is free takes it.
	slots := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, len(writers))
	for w, conn := range writers {
		wg.Go(func() {
			ctx := context.Background()
			n := 0
			for range slots {
				// A key per row: rows of one key never share a batch,
				// and this measures the wake-up, not per-key order.
				n++
				key := []byte("order-" + strconv.Itoa(w) + "-" + strconv.Itoa(n))
				tx, err := conn.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				var id int64
				if err := tx.QueryRow(ctx, `INSERT INTO messages (topic, key, payload) VALUES ($1, $2, 'x') RETURNING id`,
					wakeupTopic, key).Scan(&id); err != nil {
					_ = tx.Rollback(ctx)
					errs <- err
					return
				}
				if err := tx.Commit(ctx); err != nil {
					errs <- err
					return
				}
				committed[id] = time.Now()
			}
		})
	}
	interval := time.Second / time.Duration(rate)
	tick := time.NewTicker(interval)
	start := time.Now()
	for i := 0; i < total; {
		<-tick.C
		// Catch up on ticks the ticker dropped, so the rate holds.
		for due := int(time.Since(start)/interval) + 1; i < total && i < due; i++ {
			slots <- struct{}{}
		}
	}
	tick.Stop()
	close(slots)
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("writer: %v", err)
	}
	if err := <-consumeErr; err != nil {
		b.Fatalf("consume: %v", err)
	}
	b.StopTimer()

	lat := make([]float64, 0, total)
	early := 0
	for id := warmup + 1; id <= total; id++ {
		d := consumed[id].Sub(committed[id])
		if d < 0 {
			// Polled before the writer's Commit returned: the relay saw
			// the commit before the client did. Count it as zero.
			early++
			d = 0
		}
		lat = append(lat, float64(d)/float64(time.Millisecond))
	}
	slices.Sort(lat)
	p := func(q float64) float64 { return lat[int(q*float64(len(lat)-1))] }
	b.ReportMetric(p(0.50), "p50-ms")
	b.ReportMetric(p(0.90), "p90-ms")
	b.ReportMetric(p(0.99), "p99-ms")
	b.ReportMetric(lat[len(lat)-1], "max-ms")
	notes := float64(notify.n.Load()) / float64(total)
	b.ReportMetric(notes, "notifies/row")
	b.Logf("%d rows at %d rows/s, wake-up %v: p50 %.2fms p90 %.2fms p99 %.2fms max %.2fms; %.3f notifies/row, %.1f rows/batch (%d consumed before commit returned)",
		len(lat), rate, !cfg.DisableWakeup, p(0.50), p(0.90), p(0.99), lat[len(lat)-1], notes, rowsPerBatch(b, db), early)
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
