package relay_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/relay/relay/relaytest"
)

// The grants docs/operations.md gives an application role are enough to
// enqueue, wake-up trigger included, and no more than that.
func TestApplicationRoleGrants(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	var b [4]byte
	_, _ = rand.Read(b[:])
	role := "app_" + hex.EncodeToString(b[:])
	schema := pgx.Identifier{db.Schema}.Sanitize()
	for _, stmt := range []string{
		"CREATE ROLE " + role,
		"GRANT USAGE ON SCHEMA " + schema + " TO " + role,
		"GRANT INSERT ON " + schema + ".messages TO " + role,
		"GRANT SELECT ON SEQUENCE " + schema + ".relay_idle_until TO " + role,
	} {
		if _, err := db.Pool.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	t.Cleanup(func() {
		_, _ = db.Pool.Exec(context.Background(), "DROP OWNED BY "+role)
		_, _ = db.Pool.Exec(context.Background(), "DROP ROLE "+role)
	})

	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "SET LOCAL ROLE "+role); err != nil {
		t.Fatal(err)
	}
	// A relay registered as idle, so the trigger's WHEN is true and the
	// notify function runs too.
	if _, err := tx.Exec(ctx, `RESET ROLE; SELECT setval('relay_idle_until', 9e15::bigint); SET LOCAL ROLE `+role); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO messages (topic, key, payload) VALUES ('t', 'k', 'p')`); err != nil {
		t.Fatalf("insert as the application role: %v", err)
	}
	if _, err := tx.Exec(ctx, `SAVEPOINT s`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT count(*) FROM messages`); err == nil {
		t.Error("the application role can read the outbox; the documented grants should not allow it")
	}
}
