package relay

import "github.com/outboxrelay/relay/internal/pgstore"

// Querier is a *pgxpool.Pool, a *pgx.Conn or a pgx.Tx whose search_path is
// the outbox schema: what CheckSchema and ReadMigrations read through.
type Querier = pgstore.Querier
