package pgstore

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/outboxrelay/relay/migrations"
)

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// ValidSchema reports whether name can be used as the outbox schema. The rule
// is stricter than Postgres's: lower-case letters, digits and underscores, so
// the name never needs quoting in psql or in an application's SQL.
func ValidSchema(name string) error {
	if !schemaName.MatchString(name) {
		return fmt.Errorf("%q is not a valid schema name: use 1-63 lower-case letters, digits or underscores, not starting with a digit", name)
	}
	return nil
}

// PoolConfig parses a database URL and points the connections' search_path at
// schema, so the relay's static SQL finds its tables. It also pins the
// sessions to READ COMMITTED, whatever the database's or the role's
// default_transaction_isolation: the claim relies on each statement seeing
// what committed before it (under REPEATABLE READ, a claim that meets a row
// another relay marked sent after its snapshot fails with a serialization
// error, and the held-rows check would not see rows committed since).
// Settings sent at connection start win over ALTER ROLE and ALTER DATABASE
// defaults.
func PoolConfig(databaseURL, schema string) (*pgxpool.Config, error) {
	if err := ValidSchema(schema); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("database url: %w", redactParseError(err))
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize()
	cfg.ConnConfig.RuntimeParams["default_transaction_isolation"] = "read committed"
	return cfg, nil
}

// redactParseError replaces a URL parse error with a fixed message: pgconn's
// and net/url's errors quote the URL, and with it any password.
func redactParseError(err error) error {
	if _, ok := errors.AsType[*pgconn.ParseConfigError](err); ok {
		return errors.New("cannot parse it; expected postgres://user:password@host:port/dbname?sslmode=... or key=value pairs")
	}
	return err
}

// Migrator applies the embedded migrations to one schema.
type Migrator struct {
	provider *goose.Provider
	db       *sql.DB
}

// NewMigrator connects to the database with its own small connection pool.
// It creates schema if needed. Several migrators may run at once against one
// database: a Postgres advisory lock, keyed by schema, serialises them.
func NewMigrator(ctx context.Context, pool *pgxpool.Config, schema string) (*Migrator, error) {
	conn := pool.ConnConfig.Copy()
	db := stdlib.OpenDB(*conn)
	db.SetMaxOpenConns(2)
	if _, err := db.ExecContext(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{schema}.Sanitize()); err != nil {
		// Two instances creating the schema at the same moment can race
		// on the catalog; the loser finds the schema there.
		var exists bool
		if qerr := db.QueryRowContext(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); qerr != nil || !exists {
			_ = db.Close()
			return nil, fmt.Errorf("create schema %s: %w", schema, err)
		}
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte("outbox-relay-migrate:" + schema))
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(int64(h.Sum64() >> 1)))
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithTableName(schema+".goose_db_version"),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return &Migrator{provider: p, db: db}, nil
}

// Up applies every pending migration and returns how many it applied.
func (m *Migrator) Up(ctx context.Context) (int, error) {
	res, err := m.provider.Up(ctx)
	if err != nil {
		return len(res), fmt.Errorf("migrate up: %w", err)
	}
	return len(res), nil
}

// Down rolls back the newest applied migration.
func (m *Migrator) Down(ctx context.Context) error {
	if _, err := m.provider.Down(ctx); err != nil {
		return fmt.Errorf("migrate down: %w", err)
	}
	return nil
}

// Status lists every migration and whether it is applied.
func (m *Migrator) Status(ctx context.Context) ([]*goose.MigrationStatus, error) {
	st, err := m.provider.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate status: %w", err)
	}
	return st, nil
}

// Pending reports whether migrations remain to be applied.
func (m *Migrator) Pending(ctx context.Context) (bool, error) {
	return m.provider.HasPending(ctx)
}

// Close releases the migrator's connections.
func (m *Migrator) Close() error { return m.db.Close() }

// CheckSchema returns an error unless every migration this binary embeds is
// applied in the schema q's search_path points at. Readiness uses it: a
// relay whose schema is behind its code must not report ready.
func CheckSchema(ctx context.Context, q Querier) error {
	want, err := latestMigration()
	if err != nil {
		return err
	}
	var have int64
	err = q.QueryRow(ctx, `SELECT COALESCE(max(version_id), 0) FROM goose_db_version`).Scan(&have)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		return errors.New("the schema is not migrated: run relay migrate up")
	}
	if err != nil {
		return fmt.Errorf("read the schema version: %w", err)
	}
	if have < want {
		return fmt.Errorf("schema at migration %d, this relay needs %d: run relay migrate up", have, want)
	}
	return nil
}

// latestMigration is the version of the newest embedded migration.
func latestMigration() (int64, error) {
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		return 0, err
	}
	var latest int64
	for _, e := range entries {
		if v, err := goose.NumericComponent(e.Name()); err == nil && strings.HasSuffix(e.Name(), ".sql") {
			latest = max(latest, v)
		}
	}
	return latest, nil
}

// MigrationState is one embedded migration and whether a schema has it.
type MigrationState struct {
	Version   int64
	File      string
	Applied   bool
	AppliedAt time.Time
}

// ReadMigrations lists the embedded migrations and which of them are applied
// in the schema q's search_path points at. Unlike Migrator.Status it creates
// nothing: not the schema, not goose's version table. schemaExists is false
// when the schema itself does not exist.
func ReadMigrations(ctx context.Context, q Querier) (states []MigrationState, schemaExists bool, err error) {
	var hasSchema, hasTable bool
	err = q.QueryRow(ctx, `SELECT current_schema() IS NOT NULL, to_regclass('goose_db_version') IS NOT NULL`).Scan(&hasSchema, &hasTable)
	if err != nil {
		return nil, false, fmt.Errorf("migrate status: %w", err)
	}
	applied := map[int64]time.Time{}
	if hasTable {
		rows, err := q.Query(ctx, `SELECT version_id, max(tstamp) FROM goose_db_version WHERE version_id > 0 AND is_applied GROUP BY version_id`)
		if err != nil {
			return nil, hasSchema, fmt.Errorf("migrate status: %w", err)
		}
		var v int64
		var at time.Time
		if _, err := pgx.ForEachRow(rows, []any{&v, &at}, func() error { applied[v] = at; return nil }); err != nil {
			return nil, hasSchema, fmt.Errorf("migrate status: %w", err)
		}
	}
	files, err := migrationFiles()
	if err != nil {
		return nil, hasSchema, err
	}
	for _, f := range files {
		at, ok := applied[f.version]
		states = append(states, MigrationState{Version: f.version, File: f.name, Applied: ok, AppliedAt: at})
	}
	return states, hasSchema, nil
}

type migrationFile struct {
	version int64
	name    string
}

// migrationFiles lists the embedded migrations in version order.
func migrationFiles() ([]migrationFile, error) {
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		return nil, err
	}
	var out []migrationFile
	for _, e := range entries {
		if v, err := goose.NumericComponent(e.Name()); err == nil && strings.HasSuffix(e.Name(), ".sql") {
			out = append(out, migrationFile{version: v, name: e.Name()})
		}
	}
	slices.SortFunc(out, func(a, b migrationFile) int { return cmp.Compare(a.version, b.version) })
	return out, nil
}

var (
	dropStatement = regexp.MustCompile(`(?im)^\s*DROP\s+(TABLE|VIEW|SEQUENCE|FUNCTION|TRIGGER|INDEX|TYPE)\s+(?:IF\s+EXISTS\s+)?([a-z0-9_]+)`)
	dropColumn    = regexp.MustCompile(`(?im)^\s*ALTER\s+TABLE\s+([a-z0-9_]+)\s+DROP\s+COLUMN\s+(?:IF\s+EXISTS\s+)?([a-z0-9_]+)`)
)

// MigrationDrops returns the file of migration version and what rolling it
// back drops, as "table messages", "view blocked_messages", … in the order
// of its Down section.
func MigrationDrops(version int64) (file string, drops []string, err error) {
	files, err := migrationFiles()
	if err != nil {
		return "", nil, err
	}
	for _, f := range files {
		if f.version != version {
			continue
		}
		b, err := fs.ReadFile(migrations.FS, f.name)
		if err != nil {
			return "", nil, err
		}
		_, down, _ := strings.Cut(string(b), "-- +goose Down")
		for _, m := range dropStatement.FindAllStringSubmatch(down, -1) {
			drops = append(drops, strings.ToLower(m[1])+" "+m[2])
		}
		// A dropped column loses what it held: say so too.
		for _, m := range dropColumn.FindAllStringSubmatch(down, -1) {
			drops = append(drops, "column "+m[1]+"."+m[2])
		}
		return f.name, drops, nil
	}
	return "", nil, fmt.Errorf("no migration %d in this binary", version)
}
