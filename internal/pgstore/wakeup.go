package pgstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// declareIdleQuery asks inserts to notify for the next $1 milliseconds of
// the database clock, the one the trigger reads.
const declareIdleQuery = `SELECT setval('relay_idle_until', (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $1)`

// openTransactionsQuery lists the transactions that have written something
// and not ended, by the lock every transaction holds on its own id. Run after
// declareIdleQuery, it names every transaction that may have inserted
// without seeing the registration. (pg_snapshot_xip would miss those at or
// above the snapshot's xmax; pg_locks is readable by every role, unlike
// pg_stat_activity's backend_xid.)
const openTransactionsQuery = `
SELECT COALESCE(array_agg(transactionid::text), '{}') FROM pg_locks
WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted`

// stillOpenQuery keeps those of $1 that have not ended.
const stillOpenQuery = `
SELECT COALESCE(array_agg(x), '{}') FROM unnest($1::text[]) x
WHERE x IN (SELECT transactionid::text FROM pg_locks
            WHERE locktype = 'transactionid' AND mode = 'ExclusiveLock' AND granted)`

// declareBusyQuery stops notifications. setval is not transactional: it
// takes effect at once, whatever the transaction it runs in does later.
const declareBusyQuery = `SELECT setval('relay_idle_until', 1)`

// DeclareIdle registers the relay for wake-ups for ttl: until it expires,
// the outbox's insert trigger sends a NOTIFY on the schema's channel
// (WakeupChannel), which the relay's listener (Listen) turns into a poll; a
// busy relay withdraws it (DeclareBusy). It returns the transactions open
// at that moment: they may have inserted before the registration was
// visible, so sent no NOTIFY (see StillOpen).
func (s *Store) DeclareIdle(ctx context.Context, ttl time.Duration) ([]string, error) {
	// One round trip; each statement of the batch takes its own snapshot,
	// and setval is visible at once, so the second sees the registration.
	b := &pgx.Batch{}
	b.Queue(declareIdleQuery, ttl.Milliseconds())
	var open []string
	b.Queue(openTransactionsQuery).QueryRow(func(row pgx.Row) error { return row.Scan(&open) })
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("declare idle: %w", err)
	}
	return open, nil
}

// StillOpen returns those of the transactions in open that have not ended.
func (s *Store) StillOpen(ctx context.Context, open []string) ([]string, error) {
	var still []string
	err := s.pool.QueryRow(ctx, stillOpenQuery, open).Scan(&still)
	return still, err
}

// DeclareBusy withdraws the registration, so inserts stop notifying.
func (s *Store) DeclareBusy(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, declareBusyQuery)
	return err
}

// Listen runs one LISTEN session on the outbox's wake-up channel until it
// fails or ctx ends. listening is called once the LISTEN is in place, and
// notified on every notification.
func (s *Store) Listen(ctx context.Context, listening, notified func()) error {
	// A session of its own: LISTEN is session state and the connection
	// spends its life blocked waiting. Should the relay freeze, Postgres
	// ends the session once notifications wait unread.
	conn, err := s.ownSession(ctx, listenerSessionQuery)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{WakeupChannel(s.schema)}.Sanitize()); err != nil {
		return err
	}
	listening()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		notified()
	}
}

// WakeupChannel is the NOTIFY channel of a schema's outbox, as the trigger
// in migrations/ names it: '<schema>_wakeup', or, when that would pass
// Postgres's 63-byte limit on names, the schema's first 47 characters, '_',
// 8 hex digits of its SHA-256 and '_wakeup'.
func WakeupChannel(schema string) string {
	if len(schema)+len("_wakeup") <= maxIdentifierBytes {
		return schema + "_wakeup"
	}
	sum := sha256.Sum256([]byte(schema))
	return schema[:47] + "_" + hex.EncodeToString(sum[:4]) + "_wakeup"
}

// maxIdentifierBytes is Postgres's limit on names (NAMEDATALEN - 1).
const maxIdentifierBytes = 63
