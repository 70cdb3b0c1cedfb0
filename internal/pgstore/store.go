package pgstore

import (
	"context"
	"math"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Querier is a *pgxpool.Pool, a *pgx.Conn or a pgx.Tx whose search_path is
// the outbox schema: what the schema checks (CheckSchema, ReadMigrations)
// and the operator API (package stuck) run their statements through.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Store runs the delivery engine's statements on one outbox: through its
// pool, whose search_path is the outbox schema (see PoolConfig), and on the
// sessions it opens beside the pool (the listener's, the instance slot's).
// The SQL names no schema, so it stays constant whatever the schema is
// called.
type Store struct {
	pool   *pgxpool.Pool
	schema string
	bound  string // the stall bound, as a setting's value (see boundSetting)
}

// NewStore returns the store of the outbox in schema, reached through pool.
//
// stallBound is how long the relay's sessions may stay silent, or leave
// what they send unacknowledged, before Postgres ends them, and their locks
// with them: a frozen relay keeps its sockets open, so the server might
// never notice it otherwise. A batch's transaction sets
// idle_in_transaction_session_timeout to it (SET LOCAL: the pool's
// connections keep their defaults outside batches), the slot's session
// idle_session_timeout. Those timers run only while the server waits for
// the client, not while it sends to a frozen one (a claim's rows,
// notifications to the listener), so the batches, the slot's session and
// the listener's also set tcp_user_timeout to it.
func NewStore(pool *pgxpool.Pool, schema string, stallBound time.Duration) *Store {
	return &Store{pool: pool, schema: schema, bound: boundSetting(stallBound)}
}

// boundMs is a bound in milliseconds as Postgres's settings and the
// kernel's TCP_USER_TIMEOUT take it: at most 2^31-1 (24.8 days; produce
// timeouts of days come near).
func boundMs(d time.Duration) int64 {
	return min(d.Milliseconds(), math.MaxInt32)
}

// boundSetting is boundMs as a setting's value.
func boundSetting(d time.Duration) string {
	return strconv.FormatInt(boundMs(d), 10)
}
