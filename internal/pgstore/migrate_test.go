package pgstore_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/internal/pgstore"
	"github.com/outboxrelay/relay/internal/relaytest"
)

func TestCheckSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := relaytest.NewDB(t)
	if err := pgstore.CheckSchema(ctx, db.Pool); err != nil {
		t.Fatalf("migrated schema: %v", err)
	}

	// One migration behind: the newest one rolled back.
	if _, err := db.Pool.Exec(ctx, `DELETE FROM goose_db_version WHERE version_id = (SELECT max(version_id) FROM goose_db_version)`); err != nil {
		t.Fatal(err)
	}
	if err := pgstore.CheckSchema(ctx, db.Pool); err == nil || !strings.Contains(err.Error(), "run relay migrate up") {
		t.Errorf("schema behind: %v; want an error telling to migrate", err)
	}

	// A schema never migrated.
	cfg, err := pgstore.PoolConfig(relaytest.DatabaseURL(), "no_such_schema_"+db.Schema)
	if err != nil {
		t.Fatal(err)
	}
	empty, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer empty.Close()
	if err := pgstore.CheckSchema(ctx, empty); err == nil || !strings.Contains(err.Error(), "not migrated") {
		t.Errorf("unmigrated schema: %v; want an error saying so", err)
	}
}
