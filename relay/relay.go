package relay

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/kafkasink"
	"github.com/outboxrelay/relay/internal/pgstore"
	"github.com/outboxrelay/relay/internal/wait"
)

// Relay delivers outbox rows to Kafka. Create it with New and call Run.
type Relay struct {
	cfg    Config
	store  *pgstore.Store
	logger *slog.Logger

	// wake carries "look for rows now" from the listener to the loop. It
	// holds at most one signal: many notifications collapse into one poll.
	wake chan struct{}
	// idle is true while this relay is registered for wake-ups. Only the
	// delivery loop touches it.
	idle bool
	// lingerUntil is when the next claim may come, after a claim that did
	// not fill its batch (Config.ClaimLinger). Only the delivery loop
	// touches it.
	lingerUntil time.Time

	alerter alert.Alerter
	health  kafkaHealth
	// inFlight holds a token per claimed batch awaiting Kafka, at most
	// inFlightLimit (its capacity is InFlightBatches). finished carries
	// their results. Only the delivery loop uses them.
	inFlight chan struct{}
	finished chan batchResult
	// flying holds the rows of this relay's batches in flight, so the next
	// claim skips their keys instead of locking rows they hold back.
	flyingMu sync.Mutex
	flying   map[*batch][]row
	// instances is how many relays share this outbox, as last counted
	// (nil before the first count); see instances.go.
	instances atomic.Pointer[instanceCount]
	// counted is closed once the relay has counted the instances, or
	// failed to.
	counted     chan struct{}
	countedOnce sync.Once

	// sink is the Kafka side: records, produce, topic checks.
	sink *kafkasink.Sink
	// afterLock is pgstore.ClaimParams.AfterLock, for tests.
	afterLock func()
}

// New returns a relay that claims rows through pool and produces them with
// client. The pool's search_path must be cfg.Schema (PoolConfig sets it) and
// the client must come from NewKafkaClient, which pins acks=all and
// idempotence. The caller keeps ownership of pool and client.
func New(cfg Config, pool *pgxpool.Pool, client *kgo.Client, logger *slog.Logger) *Relay {
	cfg = cfg.withDefaults()
	if cfg.Instance == "" {
		cfg.Instance = RandomInstanceName()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Relay{
		cfg:     cfg,
		store:   pgstore.NewStore(pool, cfg.Schema, cfg.stallBound()),
		logger:  logger.With("instance", cfg.Instance),
		wake:    make(chan struct{}, 1),
		alerter: cmp.Or[alert.Alerter](cfg.Alerter, alert.Log{Logger: logger}),
		health:  kafkaHealth{metrics: cfg.Metrics, flapWindow: cfg.OutageAlertAfter},

		inFlight: make(chan struct{}, cfg.InFlightBatches),
		finished: make(chan batchResult, cfg.InFlightBatches),
		flying:   map[*batch][]row{},
		counted:  make(chan struct{}),
	}
	r.sink = r.newSink(client)
	return r
}

// Run delivers rows until ctx ends, then stops claiming, finishes the batch in
// flight (or rolls it back after ShutdownTimeout, so its rows stay pending)
// and returns nil. It returns an error only if it cannot run at all.
func (r *Relay) Run(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	if !r.cfg.DisableWakeup {
		g.Go(func() error {
			r.listen(gctx)
			return nil
		})
	}
	g.Go(func() error {
		r.deliverLoop(gctx)
		return nil
	})
	g.Go(func() error {
		r.watchLag(gctx)
		return nil
	})
	g.Go(func() error {
		r.watchInstances(gctx)
		return nil
	})
	if !r.cfg.DeleteOnSend {
		g.Go(func() error {
			r.pruneSentRows(gctx)
			return nil
		})
	}
	err := g.Wait()
	r.sink.WaitRefreshes()
	return err
}

// deliverLoop claims batches while there is work and otherwise waits for a
// wake-up, the poll interval or the end of ctx.
func (r *Relay) deliverLoop(ctx context.Context) {
	defer r.declareBusy(context.WithoutCancel(ctx))
	defer r.drain()
	failures := 0
	// rechecked is true once the relay, having found nothing, registered
	// for notifications and looked once more; the next empty claim sleeps.
	rechecked := false
	// open are the transactions that were open when the relay registered
	// and have not ended yet; openUntil is when the relay stops watching
	// them and leaves them to the poll interval.
	var open []string
	var openUntil time.Time
	// Know this relay's share before the first claim, so that a standby
	// does not claim at start (a failed first count closes counted too).
	select {
	case <-ctx.Done():
	case <-r.counted:
	}
	for ctx.Err() == nil {
		if r.inFlightLimit() == 0 && len(r.inFlight) == 0 {
			// A standby: the other instances use the whole budget. It
			// claims nothing and does not register for wake-ups; a new
			// count pokes it.
			rechecked, open = false, nil
			if !r.sleep(ctx, r.cfg.PollInterval) {
				return
			}
			continue
		}
		n, err := r.deliverOnce(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			failures++
			wait := r.loopBackoff(failures)
			if errors.Is(err, errOutage) {
				r.logger.Warn("kafka_unavailable", "error", err, "retry_in", wait.String())
			} else {
				r.logger.Error("delivery_failed", "error", err, "retry_in", wait.String())
			}
			if !r.sleep(ctx, wait) {
				return
			}
			continue
		case n > 0:
			failures = 0
			rechecked = false
			open = nil
			continue // there may be more
		}
		failures = 0
		if !r.cfg.DisableWakeup && !rechecked {
			// Register (or renew the registration) for notifications,
			// then look once more: a row committed while we were
			// registering did not notify us.
			o, err := r.declareIdle(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return // shutting down, not a failure
				}
				r.logger.Warn("declare_idle_failed", "error", err)
			} else {
				// Look once more now (a row committed while we were
				// registering did not notify us) and again once the
				// transactions open at registration have ended.
				open = o
				openUntil = time.Now().Add(r.cfg.PollInterval)
				rechecked = true
				continue
			}
		}
		if len(open) > 0 {
			var alive bool
			if open, alive = r.awaitOpen(ctx, open, openUntil); !alive {
				return
			}
			continue
		}
		rechecked = false
		if !r.sleep(ctx, r.cfg.PollInterval) {
			return
		}
	}
}

// sleep waits for d, a wake-up or the end of ctx; it reports whether ctx is
// still live.
func (r *Relay) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-r.wake:
		return true
	case <-t.C:
		return true
	}
}

// poke asks the loop to look for rows now. It never blocks.
func (r *Relay) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// declareIdle registers the relay for wake-up notifications. The
// registration expires after a few poll intervals so a relay that dies while
// idle does not make inserts notify forever.
func (r *Relay) declareIdle(ctx context.Context) ([]string, error) {
	open, err := r.store.DeclareIdle(ctx, 3*r.cfg.PollInterval)
	if err != nil {
		return nil, err
	}
	r.idle = true
	return open, nil
}

// awaitOpen waits until one of the transactions in open ends, a wake-up
// arrives or until passes, and returns those still open (none once until
// has passed) and whether ctx is live. A transaction open when the relay
// registered may have inserted before the registration was visible, so it
// sent no NOTIFY: when it ends, a claim finds its rows. The relay looks after
// each end rather than after all of them, since other sessions' long
// transactions may be among them.
func (r *Relay) awaitOpen(ctx context.Context, open []string, until time.Time) ([]string, bool) {
	backoff := time.Millisecond
	for {
		if !time.Now().Before(until) {
			return nil, true // the poll interval covers them from here
		}
		t := time.NewTimer(min(backoff, time.Until(until)))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, false
		case <-r.wake:
			t.Stop()
			return open, true
		case <-t.C:
		}
		backoff = min(2*backoff, 50*time.Millisecond)
		still, err := r.store.StillOpen(ctx, open)
		if err != nil {
			return nil, ctx.Err() == nil
		}
		if len(still) < len(open) {
			return still, true
		}
	}
}

// declareBusy removes the registration so inserts stop notifying.
func (r *Relay) declareBusy(ctx context.Context) {
	if !r.idle {
		return
	}
	if err := r.store.DeclareBusy(ctx); err != nil {
		r.logger.Warn("declare_busy_failed", "error", err)
		return
	}
	r.idle = false
}

// deliverOnce keeps up to inFlightLimit claimed batches awaiting Kafka and
// returns when one of them has finished: how many rows it claimed and its
// error. It returns 0 rows only when nothing was claimed and nothing is in
// flight. Claiming the next batch while the last one waits for Kafka is
// safe for per-key order: a row is claimable only when no earlier row of its
// key is pending, and the rows in flight are still pending.
func (r *Relay) deliverOnce(ctx context.Context) (int, error) {
	var claimErr error
	var last *batch // claimed by this call, with room left for another
	limit := r.inFlightLimit()
	if len(r.inFlight) < limit {
		r.linger(ctx)
	}
	for len(r.inFlight) < limit && ctx.Err() == nil {
		b, err := r.claimBatch(ctx, nil)
		if err != nil {
			claimErr = err
			break
		}
		if b == nil {
			break
		}
		if !b.more && r.cfg.ClaimLinger > 0 {
			r.lingerUntil = b.started.Add(r.cfg.ClaimLinger)
		}
		r.inFlight <- struct{}{}
		r.setFlying(b, true)
		go func() {
			n, err := r.finishBatch(ctx, b, nil)
			r.setFlying(b, false)
			r.finished <- batchResult{n, err}
		}()
		if !b.more {
			if len(r.inFlight) < limit {
				last = b
			}
			break // the backlog is drained: the next claim would find little
		}
	}
	if len(r.inFlight) == 0 {
		return 0, claimErr
	}
	// A small batch (a trickle of rows) is answered by Kafka well before it
	// is marked and committed: claim what arrived meanwhile from then on,
	// rather than after the commit. Its keys stay excluded until it ends.
	var produced chan struct{}
	if last != nil && claimErr == nil {
		produced = last.produced
	}
	select {
	case res := <-r.finished:
		<-r.inFlight
		return res.n, cmp.Or(res.err, claimErr)
	case <-produced:
		return len(last.rows), nil
	}
}

// linger waits, after a claim that did not fill its batch, until
// Config.ClaimLinger has passed since it, or ctx ends: rows accumulate
// meanwhile, and the next claim takes them as one batch.
func (r *Relay) linger(ctx context.Context) {
	if d := time.Until(r.lingerUntil); d > 0 {
		_ = wait.Sleep(ctx, d) // ended early: the claim loop checks ctx
	}
}

// setFlying records that b is in flight, or no longer.
func (r *Relay) setFlying(b *batch, on bool) {
	r.flyingMu.Lock()
	defer r.flyingMu.Unlock()
	if on {
		r.flying[b] = b.rows
	} else {
		delete(r.flying, b)
	}
}

// flyingInto records in q the rows of this relay's batches in flight.
func (r *Relay) flyingInto(q *pgstore.ClaimParams) {
	r.flyingMu.Lock()
	defer r.flyingMu.Unlock()
	for _, rows := range r.flying {
		q.AddFlying(rows)
	}
}

// drain waits for the batches in flight, for shutdown.
func (r *Relay) drain() {
	for len(r.inFlight) > 0 {
		<-r.finished
		<-r.inFlight
	}
}

type batchResult struct {
	n   int
	err error
}

// errOutage reports a batch that Kafka did not take at all, for reasons that
// are not the rows' own. The loop backs off; no row spent an attempt.
var errOutage = errors.New("kafka unavailable")

// batch is a claimed set of rows and the transaction holding their locks.
type batch struct {
	work   context.Context
	cancel context.CancelFunc
	tx     *pgstore.BatchTx
	rows   []row
	more   bool // rows may be pending beyond the claim's window
	// produced is closed once Kafka has answered the batch's rows, before
	// they are marked: the loop may claim the next batch from then on.
	produced chan struct{}
	started  time.Time
}

// deliverBatch claims and finishes one batch; now is a fixed "now" for tests.
func (r *Relay) deliverBatch(ctx context.Context, now *time.Time) (int, error) {
	b, err := r.claimBatch(ctx, now)
	if err != nil || b == nil {
		return 0, err
	}
	return r.finishBatch(ctx, b, now)
}

// claimBatch opens a transaction and claims rows in it. It returns nil, and
// no transaction, when there are none. Only the delivery loop calls it.
func (r *Relay) claimBatch(ctx context.Context, now *time.Time) (_ *batch, err error) {
	b := &batch{started: time.Now(), produced: make(chan struct{})}
	// The batch must be able to finish after ctx ends (graceful shutdown),
	// but not for longer than the shutdown timeout.
	b.work, b.cancel = r.batchContext(ctx)
	b.tx, err = r.store.Begin(b.work)
	if err != nil {
		b.cancel()
		return nil, err
	}
	defer func() {
		if err != nil || b.rows == nil {
			_ = b.tx.Rollback(context.WithoutCancel(b.work))
			b.cancel()
		}
	}()
	// While a batch of ours is in flight, the rows it holds back are
	// held only until it ends: widening the window past them would read
	// the backlog of its keys for nothing (few hot keys: all of it).
	q := pgstore.ClaimParams{Limit: r.cfg.BatchSize, Window: r.firstWindow(), MaxBytes: r.cfg.BatchMaxBytes,
		DisableStuckBlocksKey: r.cfg.DisableStuckBlocksKey, Widen: len(r.inFlight) == 0, Now: now, AfterLock: r.afterLock}
	r.flyingInto(&q)
	b.rows, b.more, err = b.tx.Claim(b.work, q)
	if err != nil {
		return nil, err
	}
	if len(b.rows) == 0 {
		// Keep the idle registration as it was: nothing changed.
		b.rows = nil
		return nil, nil
	}
	if r.idle {
		// We have work again: stop asking inserts to notify us. setval
		// is immediate, so inserts stop notifying now, not at commit.
		if err := b.tx.DeclareBusy(b.work); err != nil {
			return nil, err
		}
		r.idle = false
	}
	return b, nil
}

// finishBatch produces the batch's rows, records the outcome and commits. It
// returns how many rows the batch held. Batches in flight run it
// concurrently.
func (r *Relay) finishBatch(ctx context.Context, b *batch, now *time.Time) (int, error) {
	defer b.cancel()
	defer func() { _ = b.tx.Rollback(context.WithoutCancel(b.work)) }()
	work, tx, rows := b.work, b.tx, b.rows
	bt := r.traceBatch(b)
	defer bt.end()

	// Between waves, within the stall bound (see stallBound).
	keepAlive := func(ctx context.Context) error { return tx.KeepAlive(ctx, r.cfg.BatchTimeout/2) }
	out := r.produceWaves(work, rows, keepAlive)
	close(b.produced)
	bt.acked(out)
	if len(out.sentIDs) > 0 {
		// Kafka took records: it is up again now, before the rows are
		// seen sent, not after the commit.
		if d := r.health.up(); d > 0 {
			r.logger.Info("kafka_recovered", "outage", d.Round(time.Millisecond).String())
		}
	}
	escalated, err := out.writeBack(tx, r.cfg, now)
	if err != nil {
		bt.fail(err)
		return len(rows), err
	}
	if err := tx.Commit(work); err != nil {
		// The rows stay pending and are produced again: a duplicate, not a loss.
		bt.fail(err)
		return len(rows), err
	}
	bt.marked(len(escalated))
	r.report(ctx, out, escalated)
	r.cfg.Metrics.batchDone(rows, out, escalated, time.Since(b.started))
	if out.outage() {
		reason := outageReason(out)
		r.health.down(time.Now(), reason)
		r.maybeAlertOutage(ctx)
		return len(rows), fmt.Errorf("%w: %v", errOutage, reason)
	}
	sentTopics := map[string]bool{}
	sent := make(map[int64]bool, len(out.sentIDs))
	for _, id := range out.sentIDs {
		sent[id] = true
	}
	for _, x := range rows {
		if sent[x.ID] {
			sentTopics[x.Topic] = true
		}
	}
	r.notePartialOutage(ctx, out, sentTopics)
	return len(rows), nil
}

// report logs failures and raises one escalation alert per topic.
func (r *Relay) report(ctx context.Context, out outcome, escalated []failure) {
	if out.outage() {
		return // one log line for the batch, from the loop
	}
	type topicAlert struct {
		count  int
		reason string
	}
	byTopic := map[string]*topicAlert{}
	var topics []string
	for _, f := range escalated {
		r.logger.Error("row_escalated", "outbox_id", f.row.ID, "topic", f.row.Topic,
			"attempt", f.row.Attempts+1, "error_kind", f.errorKind(), "error", f.err)
		a := byTopic[f.row.Topic]
		if a == nil {
			a = &topicAlert{reason: f.err.Error()}
			byTopic[f.row.Topic] = a
			topics = append(topics, f.row.Topic)
		}
		a.count++
	}
	for _, topic := range topics {
		a := byTopic[topic]
		r.alerter.Raise(ctx, alert.Alert{
			Kind:    alert.KindEscalated,
			Topic:   topic,
			Count:   a.count,
			Message: fmt.Sprintf("%d rows of topic %s moved to stuck_messages; first reason: %s", a.count, topic, a.reason),
			At:      time.Now(),
		})
	}
	escalatedIDs := map[int64]bool{}
	for _, f := range escalated {
		escalatedIDs[f.row.ID] = true
	}
	for _, f := range out.failed {
		if !escalatedIDs[f.row.ID] {
			// A partition's outage is logged once, by topic and
			// partitions (notePartialOutage), not once per row.
			level := slog.LevelWarn
			if f.kind == kafkasink.Outage {
				level = slog.LevelDebug
			}
			r.logger.Log(ctx, level, "produce_failed", "outbox_id", f.row.ID, "topic", f.row.Topic,
				"attempt", f.row.Attempts+1, "error_kind", f.kind.String(), "error", f.err)
		}
	}
}

// firstWindow is how many pending rows a claim looks at first: room for the
// other batches in flight (their rows are still pending and come first), for
// this batch, and half a batch more for rows held behind earlier rows of
// their key. claim widens it when that was too little.
func (r *Relay) firstWindow() int {
	return r.cfg.BatchSize*cap(r.inFlight) + r.cfg.BatchSize/2
}

// batchContext returns a context for one batch: it ignores the cancellation
// of ctx for up to ShutdownTimeout, so the batch in flight can finish.
func (r *Relay) batchContext(ctx context.Context) (context.Context, context.CancelFunc) {
	work, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(r.cfg.ShutdownTimeout, cancel)
		context.AfterFunc(work, func() { t.Stop() })
	})
	return work, func() { stop(); cancel() }
}

var errAborted = errors.New("batch aborted before Kafka answered")
