package bench

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/internal/readback"
	"github.com/outboxrelay/relay/relay"
)

// Measuring relays the bench did not start (Config.ExternalSchema). They
// share the outbox with whoever else writes to it, so the bench never
// truncates, vacuums or drops it: it inserts rows tagged with their row
// number (headerBenchRow) for topics of its own, and sees them delivered
// only where anyone would, in Kafka. The phase is the same as with relays
// of its own (topics, writers, waitDelivered, check) with a consumer in
// place of the producer hook.

// setupExternal checks that the schema exists and is migrated, and opens
// the bench's pool on it. It creates nothing in the database.
func setupExternal(ctx context.Context, cfg Config) (*env, error) {
	schema := cfg.ExternalSchema
	poolCfg, err := relay.PoolConfig(cfg.DatabaseURL, schema)
	if err != nil {
		return nil, err
	}
	exists, err := schemaExists(ctx, poolCfg, schema)
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, fmt.Errorf("external schema %s does not exist: it must be the outbox the running relays deliver", schema)
	}
	e := &env{cfg: cfg, runID: "bench-" + randomHex(), tag: randomHex()}
	if err := e.open(ctx, poolCfg); err != nil {
		return nil, err
	}
	if err := relay.CheckSchema(ctx, e.pool); err != nil {
		e.close(ctx)
		return nil, fmt.Errorf("external schema %s: %w", schema, err)
	}
	return e, nil
}

// runExternalPhase measures the running relays once: fresh topics, the
// preload committed in one transaction (the relays see the whole backlog
// at once), and the writers, until the bench has consumed every row and
// none is pending. The clock starts as the preload's COMMIT is sent: the
// relays may start on it from then on.
func (e *env) runExternalPhase(ctx context.Context, round, phaseNo int) (Phase, error) {
	cfg := e.cfg
	topics, err := e.createPhaseTopics(ctx, phaseNo)
	if err != nil {
		return Phase{}, err
	}
	defer e.deleteTopics(context.WithoutCancel(ctx), topics)
	if err := e.waitTopicsListed(ctx, topics); err != nil {
		return Phase{}, err
	}
	streamed := e.streamedRows()
	total := cfg.Preload + streamed
	tl := newTimeline(total)

	// The consumer is connected before the clock starts.
	cons, err := e.reader(topics, 100*time.Millisecond)
	if err != nil {
		return Phase{}, fmt.Errorf("consumer: %w", err)
	}
	defer cons.Close()
	if err := cons.Ping(ctx); err != nil {
		return Phase{}, fmt.Errorf("consumer: %w", err)
	}

	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return Phase{}, fmt.Errorf("preload: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := e.insertPreload(ctx, tx, preloadTaggedQuery, topics); err != nil {
		return Phase{}, err
	}
	tl.start = time.Now()
	if err := tx.Commit(ctx); err != nil {
		return Phase{}, fmt.Errorf("preload: %w", err)
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { return e.consume(gctx, cons, tl) })
	ins, writersDone := e.startWriters(gctx, g, topics, streamed, tl)
	if err := e.awaitDelivered(gctx, g, stop, tl, total, writersDone, topics); err != nil {
		return Phase{}, err
	}

	// CPU, RSS and Postgres CPU stay 0: the relays are not this process
	// and their backends are not the bench's to find.
	return e.finishPhase(ctx, newPhase(round, total, streamed, tl, *ins), tl, *ins, "consumed", topics, total, nil)
}

// topicsTimeout bounds how long new topics may take to reach the brokers.
const topicsTimeout = 30 * time.Second

// waitTopicsListed returns once the brokers list an end offset for every
// partition of topics. On a real cluster a new topic reaches the brokers'
// metadata a moment after CreateTopics returns; a consumer that looked
// before would find it only at a later metadata refresh, on the clock.
func (e *env) waitTopicsListed(ctx context.Context, topics []string) error {
	adm := kadm.NewClient(e.admin)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(topicsTimeout)
	for {
		offs, err := adm.ListEndOffsets(ctx, topics...)
		listed := 0
		offs.Each(func(o kadm.ListedOffset) {
			if o.Err == nil {
				listed++
			} else {
				err = cmp.Or(err, o.Err)
			}
		})
		if listed == len(topics)*e.cfg.Partitions {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("topics %v: %d of %d partitions listed after %v: %v", topics, listed, len(topics)*e.cfg.Partitions, topicsTimeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// consume reads the phase's topics until ctx ends and records when each
// row was first consumed: with relays it cannot hook, that is the bench's
// acknowledgement. Records without a valid bench-row header are counted as
// foreign.
func (e *env) consume(ctx context.Context, rd *readback.Reader, tl *timeline) error {
	err := rd.Read(ctx, func(rec *kgo.Record) {
		if row, ok := e.rowOf(rec, len(tl.acked)); ok {
			tl.ack(row)
		} else {
			tl.foreign.Add(1)
		}
	}, func() bool { return false })
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("consume: %w", err)
}
