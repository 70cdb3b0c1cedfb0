package relay

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/internal/pgstore"
)

// The Postgres side of the relay lives in internal/pgstore; these are the
// parts of it a program that embeds the relay needs.

// PoolConfig parses a database URL and points the connections' search_path at
// schema, so the relay's static SQL finds its tables. It also pins the
// sessions to READ COMMITTED, whatever the database's or the role's
// default_transaction_isolation: the claim relies on each statement seeing
// what committed before it. Settings sent at connection start win over
// ALTER ROLE and ALTER DATABASE defaults.
func PoolConfig(databaseURL, schema string) (*pgxpool.Config, error) {
	return pgstore.PoolConfig(databaseURL, schema)
}

// ValidSchema reports whether name can be used as the outbox schema: 1-63
// lower-case letters, digits or underscores, not starting with a digit, so
// the name never needs quoting.
func ValidSchema(name string) error { return pgstore.ValidSchema(name) }

// Migrator applies the embedded migrations to one schema.
type Migrator = pgstore.Migrator

// NewMigrator connects to the database with its own small connection pool.
// It creates schema if needed. Several migrators may run at once against one
// database: a Postgres advisory lock, keyed by schema, serialises them.
func NewMigrator(ctx context.Context, pool *pgxpool.Config, schema string) (*Migrator, error) {
	return pgstore.NewMigrator(ctx, pool, schema)
}

// CheckSchema returns an error unless every migration this binary embeds is
// applied in the schema q's search_path points at: a relay whose schema is
// behind its code must not report ready.
func CheckSchema(ctx context.Context, q Querier) error { return pgstore.CheckSchema(ctx, q) }

// WakeupChannel is the NOTIFY channel of a schema's outbox, as the insert
// trigger names it.
func WakeupChannel(schema string) string { return pgstore.WakeupChannel(schema) }

// BoundSockets makes the connections of poolCfg give up on a Postgres that
// stops acknowledging what the relay sends after cfg's stall bound (see
// Config.stallBound), instead of after the kernel's retransmissions, about
// 15 minutes. It is the client's half of the stall bound (Linux only).
func BoundSockets(poolCfg *pgxpool.Config, cfg Config) {
	pgstore.BoundSockets(poolCfg, cfg.withDefaults().stallBound())
}
