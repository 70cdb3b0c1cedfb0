package pgstore

import (
	"context"
	"math"

	"github.com/jackc/pgx/v5"
)

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

// Slot is a relay's instance slot: a session advisory lock, keyed by the
// outbox schema's OID and a slot number, held on a connection of its own.
// pg_locks shows those locks to every role, and a relay that stops, dies or
// loses its session lets go of its lock with it, so counting the relays of
// an outbox needs no heartbeat and no cleanup.
type Slot struct {
	conn   *pgx.Conn
	schema string
	held   bool
	below  int64 // the slot number; above every slot when none was free
}

// TakeSlot opens the slot's session and locks the lowest free slot in it.
// Should the relay freeze, Postgres ends the session after the stall bound,
// and the slot is free again.
func (s *Store) TakeSlot(ctx context.Context) (*Slot, error) {
	conn, err := s.ownSession(ctx, slotSessionQuery)
	if err != nil {
		return nil, err
	}
	var slot *int64
	if err := conn.QueryRow(ctx, takeSlotQuery, s.schema).Scan(&slot); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	sl := &Slot{conn: conn, schema: s.schema, below: math.MaxInt32}
	if slot != nil {
		sl.held, sl.below = true, *slot
	}
	return sl, nil
}

// Held reports whether the session got a slot: false when every slot was
// taken.
func (sl *Slot) Held() bool { return sl.held }

// Count returns how many relays hold a slot of the outbox, this one
// included, and how many of them hold a lower slot. With every slot taken,
// this relay counts itself after all the others.
func (sl *Slot) Count(ctx context.Context) (n, rank int, err error) {
	if err := sl.conn.QueryRow(ctx, countInstancesQuery, sl.schema, sl.below).Scan(&n, &rank); err != nil {
		return 0, 0, err
	}
	if !sl.held {
		n++
	}
	return n, rank, nil
}

// Close ends the session, and frees the slot with it.
func (sl *Slot) Close(ctx context.Context) error { return sl.conn.Close(ctx) }
