package bench

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/internal/readback"
	"github.com/outboxrelay/relay/relay"
)

// stallTimeout fails a phase in which no row was acknowledged for this long.
const stallTimeout = time.Minute

// timeline records, per row, when the writer's commit returned and when
// Kafka first acknowledged the row (with external relays: when the bench
// first consumed it), in nanoseconds since the phase started (0: not yet).
// Rows are numbered from 1 in every phase, so slices indexed by that
// number hold them: in the bench's own outbox the number is the outbox id
// (the outbox is truncated with RESTART IDENTITY); in an external one it
// is the row's bench-row header (see env.rowOf).
type timeline struct {
	start     time.Time
	committed []atomic.Int64
	acked     []atomic.Int64
	nAcked    atomic.Int64
	lastAck   atomic.Int64
	foreign   atomic.Int64 // acks of ids out of range: must stay 0
	// want is how many rows the phase delivers: known at the start,
	// except in an insert storm, where the writers set it once done.
	want atomic.Int64
	// lastDone is when the phase ended: every row acknowledged and none
	// pending. Written once, by waitDelivered.
	lastDone time.Duration
}

func newTimeline(rows int) *timeline {
	t := &timeline{committed: make([]atomic.Int64, rows+1), acked: make([]atomic.Int64, rows+1)}
	t.want.Store(int64(rows))
	return t
}

func (t *timeline) since() int64 { return max(1, int64(time.Since(t.start))) }

// OnProduceRecordUnbuffered sees every record's acknowledgement (or
// failure) just before its promise runs, in the relay's client as in the
// baseline's.
func (t *timeline) OnProduceRecordUnbuffered(rec *kgo.Record, err error) {
	if err != nil || len(rec.Headers) == 0 || rec.Headers[0].Key != relay.HeaderOutboxID {
		return
	}
	id, ok := outboxID(rec, len(t.acked))
	if !ok {
		t.foreign.Add(1)
		return
	}
	t.ack(id)
}

// ack records row's first acknowledgement; later ones change nothing.
func (t *timeline) ack(row int64) {
	now := t.since()
	if t.acked[row].CompareAndSwap(0, now) {
		t.nAcked.Add(1)
		t.lastAck.Store(now)
	}
}

var _ kgo.HookProduceRecordUnbuffered = (*timeline)(nil)

// runPhase measures one variant once: fresh topics, an empty outbox, the
// preload, then the variant (and the writers, if streaming) until every row
// is delivered.
func (e *env) runPhase(ctx context.Context, v *variant, round, phaseNo int, last bool) (Phase, error) {
	if v.external {
		return e.runExternalPhase(ctx, round, phaseNo)
	}
	cfg := e.cfg
	topics, err := e.createPhaseTopics(ctx, phaseNo)
	if err != nil {
		return Phase{}, err
	}
	if !cfg.Keep || !last {
		defer e.deleteTopics(context.WithoutCancel(ctx), topics)
	}
	if _, err := e.pool.Exec(ctx, `TRUNCATE messages, stuck_messages RESTART IDENTITY`); err != nil {
		return Phase{}, fmt.Errorf("truncate: %w", err)
	}
	e.prog.setStage(fmt.Sprintf("preload %d rows", cfg.Preload), 0)
	if err := e.preload(ctx, topics); err != nil {
		return Phase{}, err
	}
	e.prog.setStage("delivering", e.streamDuration())
	streamed := e.streamedRows()
	total := cfg.Preload + streamed
	tl := newTimeline(total)

	// In a phase with a kill, the victim is chosen at the kill.
	var kw *killWatch
	if cfg.KillOneAfter > 0 && !v.baseline {
		kw = newKillWatch(total)
	}

	// Clients and pools are per phase, created before the clock starts.
	var instances []*instance
	defer func() {
		for _, in := range instances {
			in.close()
		}
	}()
	for i := range v.instances {
		hooks := []kgo.Hook{tl}
		if kw != nil {
			hooks = append(hooks, killHook{kw, tl, i})
		}
		in, err := e.newInstance(ctx, v, i, hooks)
		if err != nil {
			return Phase{}, err
		}
		instances = append(instances, in)
	}

	// The writers have a pool of their own, connected before the clock
	// starts, so that their backends' CPU is the cost of their inserts.
	writers, err := e.openWriters(ctx, streamed)
	if err != nil {
		return Phase{}, err
	}
	if writers != nil {
		defer func() { writers.Close(); e.writers = nil }()
		e.writers = writers
	}
	if v.quiet {
		// The reference of an insert storm: inserts run no trigger at all.
		if _, err := e.pool.Exec(ctx, `ALTER TABLE messages DISABLE TRIGGER messages_wakeup`); err != nil {
			return Phase{}, fmt.Errorf("disable the wake-up trigger: %w", err)
		}
		defer func() {
			_, _ = e.pool.Exec(context.WithoutCancel(ctx), `ALTER TABLE messages ENABLE TRIGGER messages_wakeup`)
		}()
	}

	// Start the peak from this phase's own footprint, not the garbage an
	// earlier phase (or its check) left behind.
	debug.FreeOSMemory()
	resetPeakRSS()
	if cfg.Outage > 0 {
		if err := cfg.KafkaDown(ctx); err != nil {
			return Phase{}, fmt.Errorf("stop kafka: %w", err)
		}
	}
	cpu0 := cpuTime()
	broker0, brokerKnown := e.brokerCPU()
	writers0 := e.backendCPU(ctx, e.writerApp())
	tl.start = time.Now()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(runCtx)
	for _, in := range instances {
		// Labels let a CPU profile tell the variants apart:
		// go tool pprof -tagfocus variant=relay ...
		labels := pprof.Labels("variant", v.name)
		// Each instance has a context of its own, so one can be killed.
		ictx, cancel := context.WithCancel(gctx)
		in.stop = cancel
		g.Go(func() error {
			defer cancel()
			var err error
			pprof.Do(ictx, labels, func(ctx context.Context) { err = in.run(ctx) })
			if err != nil && ictx.Err() == nil {
				return err
			}
			return nil
		})
	}
	if kw != nil {
		g.Go(func() error { return e.killOne(gctx, cfg.KillOneAfter, instances, kw, tl) })
	}
	if cfg.VacuumInterval > 0 {
		g.Go(func() error {
			t := time.NewTicker(cfg.VacuumInterval)
			defer t.Stop()
			for {
				select {
				case <-gctx.Done():
					return nil
				case <-t.C:
				}
				if _, err := e.pool.Exec(gctx, `VACUUM messages`); err != nil && gctx.Err() == nil {
					return fmt.Errorf("vacuum: %w", err)
				}
			}
		})
	}
	var outageRSS float64
	ins, writersDone := e.startWriters(gctx, g, topics, streamed, tl)
	if cfg.Outage > 0 {
		t := time.NewTimer(cfg.Outage)
		select {
		case <-t.C:
		case <-gctx.Done():
			t.Stop()
		}
		outageRSS = float64(peakRSS()) / (1 << 20)
		if err := cfg.KafkaUp(ctx); err != nil {
			stop()
			return Phase{}, errors.Join(fmt.Errorf("restart kafka: %w", err), g.Wait())
		}
	}
	if err := e.awaitDelivered(gctx, g, stop, tl, total, writersDone, topics); err != nil {
		return Phase{}, err
	}
	cpu := cpuTime() - cpu0
	peak := peakRSS()
	pgCPU := e.backendCPU(ctx, e.appPrefix(v))
	broker1, brokerStill := e.brokerCPU()
	writersCPU := e.backendCPU(ctx, e.writerApp()) - writers0
	total = int(tl.want.Load())

	p := newPhase(round, total, int(ins.rows), tl, *ins)
	p.OutageRSSMiB = outageRSS
	p.CPUSeconds = cpu.Seconds()
	p.CPUMsPer1k = per1k(cpu, total)
	p.PGCPUMsPer1k = per1k(pgCPU, total)
	if ins.rows > 0 && writersCPU > 0 {
		p.WriterPGCPUMsPer1k = per1k(writersCPU, int(ins.rows))
		p.PGCPUVsWriters = p.PGCPUMsPer1k / p.WriterPGCPUMsPer1k
	}
	if brokerKnown && brokerStill && cfg.Outage == 0 { // an outage restarts the broker
		p.BrokerCPUMsPer1k = per1k(broker1-broker0, total)
	}
	p.PeakRSSMiB = float64(peak) / (1 << 20)
	if kw != nil {
		p.Kill = kw.result(instances, cfg.PollInterval)
	}
	return e.finishPhase(ctx, p, tl, *ins, "ack", topics, total, kw)
}

// finishPhase adds the latency figures (from the commit to until: "ack" or
// "consumed") and, unless skipped, the consumer's check of the phase.
func (e *env) finishPhase(ctx context.Context, p Phase, tl *timeline, ins insertStats, until string, topics []string, total int, kw *killWatch) (Phase, error) {
	p.Latency = tl.latency(ins.warmupEnd(e.cfg.Warmup), until)
	if !e.cfg.SkipCheck {
		e.prog.setStage(fmt.Sprintf("checking %d rows in Kafka", total), 0)
		chk, err := e.check(ctx, topics, total, kw)
		if err != nil {
			return Phase{}, err
		}
		p.Check = &chk
	}
	return p, nil
}

// reader reads topics from their first record, waiting at most maxWait
// for a fetch to fill.
func (e *env) reader(topics []string, maxWait time.Duration) (*readback.Reader, error) {
	return readback.New(e.cfg.Brokers, topics, kgo.FetchMaxWait(maxWait))
}

// newPhase holds the figures every phase reports, its own relays or not:
// its rows, how long they took and the writers' rate.
func newPhase(round, total, streamed int, tl *timeline, ins insertStats) Phase {
	end := tl.lastDone
	return Phase{
		Round:       round,
		Rows:        int64(total),
		Seconds:     end.Seconds(),
		RowsPerSec:  float64(total) / end.Seconds(),
		InsertRate:  ins.rate(),
		Streamed:    int64(streamed),
		ForeignAcks: tl.foreign.Load(),
	}
}

// createPhaseTopics creates the fresh topics of phase phaseNo.
func (e *env) createPhaseTopics(ctx context.Context, phaseNo int) ([]string, error) {
	topics := make([]string, e.cfg.Topics)
	for i := range topics {
		topics[i] = fmt.Sprintf("%s-p%d-t%d", e.runID, phaseNo, i)
	}
	return topics, e.createTopics(ctx, topics)
}

// stormCap is the highest insert rate an insert storm's timeline has room
// for (16 bytes a row); the storm ends early if the writers reach it.
const stormCap = 100_000

// writerApp is the application_name of the writers' sessions. It carries
// the run's tag: benches running at once against one server (tests in
// parallel) must not count, or kill, each other's backends.
func (e *env) writerApp() string { return "relay-bench-writer " + e.tag }

// openWriters opens the writers' pool of a phase that streams rows, with
// every writer's connection made.
func (e *env) openWriters(ctx context.Context, streamed int) (*pgxpool.Pool, error) {
	if streamed == 0 {
		return nil, nil
	}
	poolCfg, err := relay.PoolConfig(e.cfg.DatabaseURL, e.cfg.Schema)
	if err != nil {
		return nil, err
	}
	poolCfg.MaxConns = int32(e.cfg.Writers)
	poolCfg.MinConns = int32(e.cfg.Writers)
	poolCfg.ConnConfig.RuntimeParams["application_name"] = e.writerApp()
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return nil, fmt.Errorf("writers' pool: %w", err)
	}
	conns := make([]*pgxpool.Conn, 0, e.cfg.Writers)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range e.cfg.Writers {
		c, err := pool.Acquire(ctx)
		if err != nil {
			pool.Close()
			return nil, fmt.Errorf("writers' pool: %w", err)
		}
		// A first statement, so the session's own start-up is not
		// counted as the writers' work.
		if _, err := c.Exec(ctx, `SELECT 1 FROM messages LIMIT 0`); err != nil {
			c.Release()
			pool.Close()
			return nil, fmt.Errorf("writers' pool: %w", err)
		}
		conns = append(conns, c)
	}
	return pool, nil
}

// streamedRows is how many rows the writers commit in a phase (in an
// insert storm, at most).
func (e *env) streamedRows() int {
	cfg := e.cfg
	rate := cfg.Rate
	if cfg.InsertStorm {
		rate = stormCap
	}
	if rate == 0 {
		return 0
	}
	streamed := rate * int(cfg.Duration/time.Millisecond) / 1000
	// The writers commit whole transactions; the last may overshoot.
	return (streamed + cfg.RowsPerTx - 1) / cfg.RowsPerTx * cfg.RowsPerTx
}

// startWriters streams rows rows in g, if there are any. The channel is
// closed once they are all committed; the stats are final from then on.
func (e *env) startWriters(ctx context.Context, g *errgroup.Group, topics []string, rows int, tl *timeline) (*insertStats, <-chan struct{}) {
	ins := new(insertStats)
	done := make(chan struct{})
	if rows == 0 {
		close(done)
		return ins, done
	}
	g.Go(func() error {
		defer close(done)
		var err error
		*ins, err = e.stream(ctx, topics, rows, tl)
		return err
	})
	return ins, done
}

// awaitDelivered waits until every row is delivered (waitDelivered), then
// stops the phase's goroutines in g (stop ends gctx) and waits for them.
func (e *env) awaitDelivered(gctx context.Context, g *errgroup.Group, stop context.CancelFunc, tl *timeline, total int, writersDone <-chan struct{}, topics []string) error {
	waitErr := make(chan error, 1)
	go func() {
		err := e.waitDelivered(gctx, tl, total, writersDone, topics)
		stop() // delivered (or failed): stop the variant and the writers
		waitErr <- err
	}()
	gerr := g.Wait()
	if err := <-waitErr; err != nil {
		return errors.Join(err, gerr)
	}
	return gerr
}

// pendingQuery asks whether a row of the phase is still pending.
const pendingQuery = `SELECT EXISTS (SELECT 1 FROM messages WHERE status = 'pending' AND topic = ANY($1))`

// stuckQuery counts the phase's rows a relay escalated, for the error of a
// stalled phase.
const stuckQuery = `SELECT count(*) FROM stuck_messages WHERE topic = ANY($1)`

// waitDelivered returns once every row has been acknowledged and none of
// the phase's topics is pending any more (the last batch's mark or delete
// committed). It records that moment as tl.lastDone.
func (e *env) waitDelivered(ctx context.Context, tl *timeline, total int, writersDone <-chan struct{}, topics []string) error {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	lastProgress, lastN := time.Now(), int64(-1)
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped after %d of %d rows were acknowledged: %w", tl.nAcked.Load(), total, context.Cause(ctx))
		case <-tick.C:
		}
		n := tl.nAcked.Load()
		if n != lastN {
			lastN, lastProgress = n, time.Now()
		} else if time.Since(lastProgress) > stallTimeout {
			var stuck int
			_ = e.pool.QueryRow(ctx, stuckQuery, topics).Scan(&stuck)
			return fmt.Errorf("stalled: %d of %d rows acknowledged, none for %v; %d rows of the phase in stuck_messages", n, total, stallTimeout, stuck)
		}
		if n < tl.want.Load() {
			continue
		}
		select {
		case <-writersDone:
		default:
			continue
		}
		var pending bool
		if err := e.pool.QueryRow(ctx, pendingQuery, topics).Scan(&pending); err != nil {
			return fmt.Errorf("count pending: %w", err)
		}
		if !pending {
			tl.lastDone = time.Since(tl.start)
			return nil
		}
	}
}

// instance is one relay (or the baseline loop) with its own pool and
// Kafka client.
type instance struct {
	app    string // application_name of its Postgres sessions
	pool   *pgxpool.Pool
	cut    *cutter
	client *kgo.Client
	run    func(ctx context.Context) error
	stop   context.CancelFunc // ends its run
	killed bool               // its client was closed by the kill
}

func (in *instance) close() {
	if !in.killed {
		in.client.Close()
	}
	in.pool.Close()
}

// appPrefix starts the application_name of every instance of v, so that
// the variant's backends can be found together and each one on its own.
func (e *env) appPrefix(v *variant) string {
	return "relay-bench-" + v.name + " " + e.tag + " #"
}

func (e *env) newInstance(ctx context.Context, v *variant, i int, hooks []kgo.Hook) (*instance, error) {
	cfg := e.cfg
	poolCfg, err := relay.PoolConfig(cfg.DatabaseURL, cfg.Schema)
	if err != nil {
		return nil, err
	}
	if cfg.PoolSize > 0 {
		poolCfg.MaxConns = int32(cfg.PoolSize)
	}
	in := &instance{app: e.appPrefix(v) + strconv.Itoa(i+1), cut: &cutter{dial: poolCfg.ConnConfig.DialFunc}}
	poolCfg.ConnConfig.RuntimeParams["application_name"] = in.app
	poolCfg.ConnConfig.DialFunc = in.cut.Dial
	if in.pool, err = pgxpool.NewWithConfig(ctx, poolCfg); err != nil {
		return nil, fmt.Errorf("pool: %w", err)
	}
	opts := []kgo.Opt{kgo.WithHooks(hooks...)}
	if cfg.Outage > 0 {
		// The restarted in-memory broker has no topics until produced to.
		opts = append(opts, kgo.AllowAutoTopicCreation())
	}
	if in.client, err = relay.NewKafkaClient(cfg.Brokers, opts...); err != nil {
		in.pool.Close()
		return nil, err
	}
	if v.baseline {
		b := &baseline{pool: in.pool, client: in.client, batchSize: cfg.BatchSize,
			deleteOnSend: cfg.DeleteOnSend, pollInterval: cfg.PollInterval}
		in.run = b.run
		return in, nil
	}
	r := relay.New(relay.Config{
		Schema:          cfg.Schema,
		BatchSize:       cfg.BatchSize,
		InFlightBatches: cfg.InFlightBatches,
		PollInterval:    cfg.PollInterval,
		ClaimLinger:     cfg.ClaimLinger,
		DisableWakeup:   cfg.DisableWakeup || v.quiet,
		DeleteOnSend:    cfg.DeleteOnSend,
		Instance:        fmt.Sprintf("bench-%d", i+1),
	}, in.pool, in.client, cfg.Logger)
	in.run = r.Run
	return in, nil
}

func (e *env) createTopics(ctx context.Context, topics []string) error {
	adm := kadm.NewClient(e.admin)
	// External relays check each topic's durability on first use: the
	// bench's topics get the cluster's default replication factor (-1)
	// rather than 1, so that where that default is safe they set off no
	// warning, alert or strict mode of the relays.
	replicas := int16(1)
	if e.cfg.external() {
		replicas = -1
	}
	resp, err := adm.CreateTopics(ctx, int32(e.cfg.Partitions), replicas, nil, topics...)
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	if err := resp.Error(); err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	return nil
}

func (e *env) deleteTopics(ctx context.Context, topics []string) {
	if _, err := kadm.NewClient(e.admin).DeleteTopics(ctx, topics...); err != nil {
		e.cfg.Logger.Warn("bench_delete_topics_failed", "error", err)
	}
}

// insertStats is what the writers did.
type insertStats struct {
	rows        int64
	first, last time.Duration // since the phase start: first begin, last commit
}

func (s insertStats) rate() float64 {
	if s.rows == 0 || s.last <= s.first {
		return 0
	}
	return float64(s.rows) / (s.last - s.first).Seconds()
}

func (s insertStats) warmupEnd(w time.Duration) time.Duration {
	if s.rows == 0 {
		return 0
	}
	return s.first + w
}

// streamDuration is how long the writers stream in a phase; 0 if they
// do not.
func (e *env) streamDuration() time.Duration {
	if e.cfg.Rate > 0 || e.cfg.InsertStorm {
		return e.cfg.Duration
	}
	return 0
}

// per1k is d in milliseconds per 1,000 of rows; 0 for a phase of no rows
// (a storm whose writers committed nothing), which JSON could not carry as
// the infinity the division gives.
func per1k(d time.Duration, rows int) float64 {
	if rows <= 0 {
		return 0
	}
	return float64(d.Milliseconds()) / float64(rows) * 1000
}
