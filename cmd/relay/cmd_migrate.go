package main

import (
	"context"
	"flag"
	"fmt"
	"path"
	"text/tabwriter"

	"github.com/outboxrelay/relay/relay"
)

func migrateCommand() *command {
	return &command{
		name:    "migrate",
		summary: "apply, roll back or list the outbox schema migrations",
		args:    "[up|down|status]",
		about: `Manages the outbox tables in RELAY_SCHEMA of RELAY_DATABASE_URL (the schema is
created if needed). Several relays may migrate at once: a Postgres advisory
lock serialises them.

  up      apply every pending migration (the default)
  down    roll back the newest applied migration
  status  list every migration: version, applied or pending, file`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			return func(ctx context.Context, args []string) error {
				action := "up"
				if len(args) > 0 {
					action = args[0]
				}
				if len(args) > 1 {
					return usageErrorf("migrate: unexpected argument %q; run 'relay migrate --help' for usage", args[1])
				}
				if action != "up" && action != "down" && action != "status" {
					return usageErrorf("migrate: unknown action %q; use up, down or status", action)
				}
				cfg, err := loadConfig(env.getenv)
				if err != nil {
					return err
				}
				return migrate(ctx, cfg, action, env)
			}
		},
	}
}

func migrate(ctx context.Context, cfg Config, action string, env *environment) error {
	poolCfg, err := relay.PoolConfig(cfg.DatabaseURL, cfg.Schema)
	if err != nil {
		return err
	}
	m, err := relay.NewMigrator(ctx, poolCfg, cfg.Schema)
	if err != nil {
		return err
	}
	defer m.Close()
	switch action {
	case "up":
		n, err := m.Up(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "schema %s: applied %d migration(s)\n", cfg.Schema, n)
	case "down":
		if err := m.Down(ctx); err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "schema %s: rolled back the newest migration\n", cfg.Schema)
	case "status":
		st, err := m.Status(ctx)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "VERSION\tSTATE\tAPPLIED AT\tFILE")
		for _, s := range st {
			applied := "-"
			if !s.AppliedAt.IsZero() {
				applied = s.AppliedAt.UTC().Format("2006-01-02 15:04:05Z")
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", s.Source.Version, s.State, applied, path.Base(s.Source.Path))
		}
		return w.Flush()
	}
	return nil
}
