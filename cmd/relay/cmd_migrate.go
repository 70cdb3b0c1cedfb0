package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/internal/pgstore"
	"github.com/outboxrelay/relay/relay"
)

func migrateCommand() *command {
	return &command{
		name:    "migrate",
		summary: "apply, roll back or list the outbox schema migrations",
		args:    "[up|down|status] [--outbox SCHEMA] [--yes]",
		about: `Manages the outbox tables in RELAY_SCHEMA of RELAY_DATABASE_URL. Several relays
may migrate at once: a Postgres advisory lock serialises them. When
RELAY_SCHEMA lists several outboxes, up migrates each in turn (or only
--outbox SCHEMA), and status and down want --outbox.

  up      apply every pending migration (the default); creates the schema
          if needed
  down    roll back the newest applied migration. It says what that drops,
          and refuses while rows are pending or stuck unless --yes: rolling
          back the first migration drops the outbox tables with every row
  status  list every migration: version, applied or pending, file. Reads
          only: it creates nothing, not even the schema`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			yes := fs.Bool("yes", false, "migrate down: roll back even though rows are pending or stuck")
			outbox := fs.String("outbox", "", "the outbox (a `schema` of RELAY_SCHEMA) to act on; needed by status and down when RELAY_SCHEMA lists several (up migrates them all unless given)")
			return func(ctx context.Context, args []string) error {
				// Flags may follow the action: relay migrate down --yes.
				var positional []string
				for len(args) > 0 {
					positional = append(positional, args[0])
					if err := fs.Parse(args[1:]); err != nil {
						return usageErrorf("migrate: %v; run 'relay migrate --help' for usage", err)
					}
					args = fs.Args()
				}
				action := "up"
				if len(positional) > 0 {
					action = positional[0]
				}
				if len(positional) > 1 {
					return usageErrorf("migrate: unexpected argument %q; run 'relay migrate --help' for usage", positional[1])
				}
				if action != "up" && action != "down" && action != "status" {
					return usageErrorf("migrate: unknown action %q; use up, down or status", action)
				}
				if *yes && action != "down" {
					return usageErrorf("migrate: --yes is for migrate down only")
				}
				cfg, err := env.config()
				if err != nil {
					return err
				}
				if action == "up" && *outbox == "" {
					// Every outbox of RELAY_SCHEMA, in order.
					for _, schema := range cfg.Schemas {
						one := cfg
						one.Schemas = []string{schema}
						if err := migrate(ctx, one, env); err != nil {
							return fmt.Errorf("schema %s: %w", schema, err)
						}
					}
					return nil
				}
				if cfg, err = cfg.forOutbox(*outbox); err != nil {
					return err
				}
				switch action {
				case "status":
					return migrateStatus(ctx, cfg, env)
				case "down":
					return migrateDown(ctx, cfg, *yes, env)
				}
				return migrate(ctx, cfg, env)
			}
		},
	}
}

// migrate applies the pending migrations.
func migrate(ctx context.Context, cfg Config, env *environment) error {
	poolCfg, err := relay.PoolConfig(cfg.DatabaseURL, cfg.schema())
	if err != nil {
		return err
	}
	m, err := relay.NewMigrator(ctx, poolCfg, cfg.schema())
	if err != nil {
		return err
	}
	defer m.Close()
	n, err := m.Up(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "schema %s: applied %d migration(s)\n", cfg.schema(), n)
	if mappings, _ := cfg.mappings(); len(mappings) > 0 {
		// The copy triggers of RELAY_DEBEZIUM_TABLE and RELAY_LAYOUT_TABLE,
		// owned by this role (for deployments whose relay role may not
		// install them).
		pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
		if err != nil {
			return err
		}
		defer pool.Close()
		if err := installLayouts(ctx, pool, cfg, slog.New(slog.DiscardHandler)); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "copy triggers in place on %d table(s)\n", len(mappings))
	}
	return nil
}

// migrateStatus lists the migrations without writing anything.
func migrateStatus(ctx context.Context, cfg Config, env *environment) error {
	pool, err := commandPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	states, schemaExists, err := pgstore.ReadMigrations(ctx, pool)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VERSION\tSTATE\tAPPLIED AT\tFILE")
	for _, s := range states {
		state, applied := "pending", "-"
		if s.Applied {
			state, applied = "applied", s.AppliedAt.UTC().Format("2006-01-02 15:04:05Z")
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", s.Version, state, applied, s.File)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if !schemaExists {
		fmt.Fprintf(env.stderr, "schema %s does not exist in this database: check RELAY_SCHEMA, or create it with 'relay migrate up'\n", cfg.schema())
	}
	return nil
}

// migrateDown rolls back the newest applied migration, after saying what
// that drops; it refuses while rows are pending or stuck unless yes.
func migrateDown(ctx context.Context, cfg Config, yes bool, env *environment) error {
	pool, err := commandPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	states, _, err := pgstore.ReadMigrations(ctx, pool)
	if err != nil {
		return err
	}
	var newest *pgstore.MigrationState
	for i := range states {
		if states[i].Applied {
			newest = &states[i]
		}
	}
	if newest == nil {
		return usageErrorf("migrate down: schema %s has no applied migration to roll back", cfg.schema())
	}
	file, drops, err := pgstore.MigrationDrops(newest.Version)
	if err != nil {
		return err
	}
	what := "nothing"
	if len(drops) > 0 {
		what = strings.Join(drops, ", ")
	}
	fmt.Fprintf(env.stdout, "schema %s: rolling back migration %d (%s) drops: %s\n", cfg.schema(), newest.Version, file, what)
	pending, stuck, err := undeliveredRows(ctx, pool)
	if err != nil {
		return err
	}
	if (pending > 0 || stuck > 0) && !yes {
		return usageErrorf("migrate down: schema %s holds %d pending and %d stuck row(s) not yet delivered; "+
			"refusing to roll back (add --yes to do it anyway)", cfg.schema(), pending, stuck)
	}
	pool.Close()

	poolCfg, err := relay.PoolConfig(cfg.DatabaseURL, cfg.schema())
	if err != nil {
		return err
	}
	m, err := relay.NewMigrator(ctx, poolCfg, cfg.schema())
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.Down(ctx); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "schema %s: rolled back migration %d\n", cfg.schema(), newest.Version)
	return nil
}

// undeliveredRows counts the pending and the stuck rows; a table that does
// not exist counts as empty.
func undeliveredRows(ctx context.Context, pool *pgxpool.Pool) (pending, stuck int64, err error) {
	var hasMessages, hasStuck bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('messages') IS NOT NULL, to_regclass('stuck_messages') IS NOT NULL`).Scan(&hasMessages, &hasStuck); err != nil {
		return 0, 0, fmt.Errorf("count undelivered rows: %w", err)
	}
	if hasMessages {
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM messages WHERE status = 'pending'`).Scan(&pending); err != nil {
			return 0, 0, fmt.Errorf("count pending rows: %w", err)
		}
	}
	if hasStuck {
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM stuck_messages`).Scan(&stuck); err != nil {
			return 0, 0, fmt.Errorf("count stuck rows: %w", err)
		}
	}
	return pending, stuck, nil
}
