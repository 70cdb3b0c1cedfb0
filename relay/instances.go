package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"math"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Several relays on one outbox share one database, and there the batches
// they keep in flight compete for the same cores, pages and locks: measured
// on two cores, two relays with two batches in flight each drained about
// 0.9× what one relay did and three 0.73–0.83×; with the two batches split
// between them, 0.99× and 0.95× (docs/performance.md). So InFlightBatches is a budget for
// all the relays of an outbox together. The instances split it in the order
// of their slots (below): with the default of 2, one relay keeps 2 batches
// in flight, two keep 1 each, and a third is a standby that claims nothing
// until one of the others is gone.
//
// A relay counts the instances through a session advisory lock that it
// holds on a connection of its own, keyed by the outbox schema's OID and a
// slot number. pg_locks shows those locks to every role, and an instance
// that stops, dies or loses its session lets go of its lock with it, so the
// count needs no heartbeat and no cleanup.

// takeSlotQuery locks the lowest free slot of the schema named $1 for the
// session and returns it; NULL when every slot is taken. The InitPlan runs
// once and the filter stops at the first lock it gets.
const takeSlotQuery = `
SELECT (SELECT s FROM generate_series(1, 4096) AS s
        WHERE pg_try_advisory_lock((SELECT oid::int FROM pg_namespace WHERE nspname = $1), s)
        LIMIT 1)`

// countInstancesQuery counts the slots of the schema named $1 that are
// held, in this database, and those of them below slot $2.
const countInstancesQuery = `
SELECT count(*), count(*) FILTER (WHERE objid::bigint < $2::bigint) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND objsubid = 2
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND classid = (SELECT oid FROM pg_namespace WHERE nspname = $1)`

// instanceCount is what a relay last counted.
type instanceCount struct {
	n    int // relays holding a slot of the outbox, this one included
	rank int // how many of them hold a lower slot
}

// Instances is how many relays this one last counted on its outbox,
// itself included; 0 until it has counted.
func (r *Relay) Instances() int {
	if c := r.instances.Load(); c != nil {
		return c.n
	}
	return 0
}

// inFlightLimit is this relay's share of InFlightBatches: an equal part,
// and one more for the lowest slots while the remainder lasts. It is 0 for
// a standby, and the whole budget until the first count succeeds.
func (r *Relay) inFlightLimit() int {
	c := r.instances.Load()
	if c == nil || c.n < 1 {
		return r.cfg.InFlightBatches
	}
	share := r.cfg.InFlightBatches / c.n
	if c.rank < r.cfg.InFlightBatches%c.n {
		share++
	}
	return share
}

// watchInstances holds this relay's slot and recounts the instances every
// poll interval, reconnecting after failures.
func (r *Relay) watchInstances(ctx context.Context) {
	r.keepSession(ctx, "instances_check_failed", func(ctx context.Context, connected func()) error {
		err := r.instancesOnce(ctx, connected)
		// A first count that failed (the database is not reachable
		// yet): the loop goes on with the whole budget until a count.
		r.countedOnce.Do(func() { close(r.counted) })
		return err
	})
}

// instancesOnce takes a slot on a new connection and counts the instances
// until the connection fails or ctx ends. connected is called once the slot
// is held.
func (r *Relay) instancesOnce(ctx context.Context, connected func()) error {
	// A session of its own: the slot lives as long as the session, and
	// should this relay freeze, Postgres ends it after the stall bound.
	conn, err := r.ownSession(ctx, slotSessionQuery)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	var slot *int64
	if err := conn.QueryRow(ctx, takeSlotQuery, r.cfg.Schema).Scan(&slot); err != nil {
		return err
	}
	connected()
	// With every slot taken, this relay counts itself after all others.
	below, extra := int64(math.MaxInt32), 1
	if slot != nil {
		below, extra = *slot, 0
	}
	t := time.NewTicker(r.cfg.PollInterval)
	defer t.Stop()
	for {
		var c instanceCount
		if err := conn.QueryRow(ctx, countInstancesQuery, r.cfg.Schema, below).Scan(&c.n, &c.rank); err != nil {
			return err
		}
		c.n += extra
		r.setInstances(c)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// setInstances records a new count. When it changed, it logs it and pokes
// the delivery loop: a standby may have a share now.
func (r *Relay) setInstances(c instanceCount) {
	defer r.countedOnce.Do(func() { close(r.counted) })
	if old := r.instances.Swap(&c); old != nil && *old == c {
		return
	}
	r.cfg.Metrics.setInstances(c.n)
	r.logger.Info("instances", "count", c.n, "in_flight_batches", r.inFlightLimit())
	r.poke()
}

// SessionNamePrefix starts the application_name of a relay's sessions.
const SessionNamePrefix = "outbox-relay"

// RandomInstanceName is the name New gives a relay whose Config.Instance is
// empty.
func RandomInstanceName() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "relay-" + hex.EncodeToString(b[:])
}

// NameSessions sets the application_name of poolCfg's sessions to
// "outbox-relay <instance>", unless the database URL (or PGAPPNAME) already
// names them, so operators find the relay's sessions in pg_stat_activity
// and can measure what they cost. Postgres keeps the first 63 bytes of it.
// The sessions the relay opens on its own (the LISTEN connection, the
// instance slot) copy the pool's settings, and with them the name.
func NameSessions(poolCfg *pgxpool.Config, instance string) {
	if _, ok := poolCfg.ConnConfig.RuntimeParams["application_name"]; ok {
		return
	}
	poolCfg.ConnConfig.RuntimeParams["application_name"] = SessionNamePrefix + " " + instance
}
