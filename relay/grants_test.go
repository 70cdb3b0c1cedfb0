package relay_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/internal/pgstore"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/stuck"
)

// The grants docs/operations.md gives an application role are enough to
// enqueue, wake-up trigger included, and no more than that: the INSERT grant
// covers the columns an application writes (topic, key, payload, headers
// and the delivery options),
// so the role cannot write delivery state (a row inserted as sent would
// never be delivered; a next_attempt_at of infinity would block its key for
// ever), choose ids or uuids, nor read the outbox.
func TestApplicationRoleGrants(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	schema := pgx.Identifier{db.Schema}.Sanitize()
	role := createRole(t, db, "app",
		"USAGE ON SCHEMA "+schema,
		"INSERT (topic, key, payload, headers, deliver_after, expires_at, partition) ON "+schema+".messages",
		"SELECT ON SEQUENCE "+schema+".relay_idle_until")

	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	// A relay registered as idle, so the trigger's WHEN is true and the
	// notify function runs too.
	if _, err := tx.Exec(ctx, `SELECT setval('relay_idle_until', 9e15::bigint)`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SET LOCAL ROLE "+role); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO messages (topic, key, payload, headers) VALUES ('t', 'k', 'p', '{"type": "created"}')`); err != nil {
		t.Fatalf("insert as the application role: %v", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO messages (topic, key, payload, deliver_after, expires_at, partition)
		VALUES ('t', 'k', 'p', now(), now() + interval '1 hour', 0)`); err != nil {
		t.Fatalf("insert with delivery options as the application role: %v", err)
	}
	refused := []struct{ what, sql string }{
		{"insert a row marked sent", `INSERT INTO messages (topic, payload, status, sent_at, kafka_partition, kafka_offset) VALUES ('t', 'p', 'sent', now(), 0, 0)`},
		{"set next_attempt_at", `INSERT INTO messages (topic, payload, next_attempt_at) VALUES ('t', 'p', 'infinity')`},
		{"set attempts", `INSERT INTO messages (topic, payload, attempts) VALUES ('t', 'p', 1000)`},
		{"set last_error", `INSERT INTO messages (topic, payload, last_error) VALUES ('t', 'p', 'x')`},
		{"choose the id", `INSERT INTO messages (id, topic, payload) OVERRIDING SYSTEM VALUE VALUES (1000000, 't', 'p')`},
		{"choose the uuid", `INSERT INTO messages (topic, payload, uuid) VALUES ('t', 'p', '00000000-0000-0000-0000-000000000000')`},
		{"set created_at", `INSERT INTO messages (topic, payload, created_at) VALUES ('t', 'p', now() - interval '1 day')`},
		{"read the outbox", `SELECT count(*) FROM messages`},
		{"update a row", `UPDATE messages SET status = 'sent'`},
	}
	for i, c := range refused {
		sp := fmt.Sprintf("s%d", i)
		if _, err := tx.Exec(ctx, "SAVEPOINT "+sp); err != nil {
			t.Fatal(err)
		}
		_, err := tx.Exec(ctx, c.sql)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" { // insufficient_privilege
			t.Errorf("the application role can %s (error: %v); the documented grants must not allow it", c.what, err)
		}
		if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+sp); err != nil {
			t.Fatal(err)
		}
	}
	// The documented insert went in with the defaults: pending, due, a uuid.
	if _, err := tx.Exec(ctx, "RESET ROLE"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM messages WHERE status = 'pending' AND attempts = 0 AND uuid IS NOT NULL AND next_attempt_at <= now()`).Scan(&n); err != nil || n != 2 {
		t.Errorf("%d due pending rows with a uuid after the application's inserts (%v), want 2", n, err)
	}
}

// The grants docs/operations.md gives the relay's runtime role and the
// operator role are enough for what each does: the relay claims, marks
// sent, escalates, prunes and passes /readyz's schema check; the operator
// lists, requeues (which fires the wake-up trigger) and discards.
func TestRuntimeAndOperatorRoleGrants(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	s := pgx.Identifier{db.Schema}.Sanitize()
	relayRole := createRole(t, db, "relay",
		"USAGE ON SCHEMA "+s,
		"SELECT, UPDATE, DELETE ON "+s+".messages",
		"SELECT, INSERT ON "+s+".stuck_messages",
		"SELECT, UPDATE ON SEQUENCE "+s+".relay_idle_until",
		"SELECT ON "+s+".goose_db_version")
	operatorRole := createRole(t, db, "operator",
		"USAGE ON SCHEMA "+s,
		"SELECT ON "+s+".messages",
		"INSERT (id, topic, key, payload, headers, created_at, uuid, deliver_after, partition) ON "+s+".messages",
		"UPDATE (status, attempts, next_attempt_at, first_error, last_error, sent_at, kafka_partition, kafka_offset, uuid, deliver_after, expires_at) ON "+s+".messages",
		"SELECT ON SEQUENCE "+s+".relay_idle_until",
		"SELECT, DELETE, UPDATE ON "+s+".stuck_messages",
		"SELECT, INSERT ON "+s+".discarded_messages",
		"SELECT ON "+s+".blocked_messages",
		"SELECT, INSERT ON "+s+".audit_log")
	// poolAs is the test's pool, but every connection acts as role.
	poolAs := func(role string) *pgxpool.Pool {
		cfg := db.Pool.Config().Copy()
		cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
			_, err := c.Exec(ctx, "SET ROLE "+role)
			return err
		}
		p, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}

	// The relay: a good row is sent, a row whose headers are not strings
	// is escalated, sent rows are pruned, the schema check passes.
	relayPool := poolAs(relayRole)
	cluster := relaytest.NewCluster(t, 1, "t")
	good := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("ok")})[0]
	var bad int64
	if err := db.Pool.QueryRow(ctx, `INSERT INTO messages (topic, key, payload, headers) VALUES ('t', 'b', 'x', '{"n": 1}') RETURNING id`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	r := relay.New(relay.Config{Schema: db.Schema, Alerter: newRecordingAlerter()}, relayPool,
		relaytest.NewProducer(t, cluster.ListenAddrs()), testLogger(t))
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 2 {
		t.Fatalf("deliver as the relay role: %d rows, %v; want 2", n, err)
	}
	if st := state(t, db, good); st.status != "sent" {
		t.Errorf("good row is %s, want sent", st.status)
	}
	stuckRow(t, db, bad)
	later := time.Now().Add(48 * time.Hour)
	if n, err := r.Prune(ctx, &later); err != nil || n != 1 {
		t.Errorf("prune as the relay role: %d rows, %v; want 1", n, err)
	}
	if err := relay.CheckSchema(ctx, relayPool); err != nil {
		t.Errorf("schema check (/readyz) as the relay role: %v", err)
	}
	// Counting the instances (instances.go): a session advisory lock and
	// pg_locks, both open to every role.
	slot, err := pgstore.NewStore(relayPool, db.Schema, time.Minute).TakeSlot(ctx)
	switch {
	case err != nil:
		t.Errorf("take an instance slot as the relay role: %v", err)
	case !slot.Held():
		t.Errorf("take an instance slot as the relay role: none free")
	default:
		if n, below, err := slot.Count(ctx); err != nil || n != 1 || below != 0 {
			t.Errorf("count the instances as the relay role: %d (%d below), %v; want 1 (0 below)", n, below, err)
		}
	}
	if slot != nil {
		_ = slot.Close(ctx)
	}

	// The operator, with a relay registered as idle so that requeue's
	// insert runs the wake-up trigger's notify function too.
	if _, err := db.Pool.Exec(ctx, `SELECT setval('relay_idle_until', 9e15::bigint)`); err != nil {
		t.Fatal(err)
	}
	opPool := poolAs(operatorRole)
	if rows, err := stuck.List(ctx, opPool, stuck.Filter{}); err != nil || len(rows) != 1 {
		t.Errorf("list as the operator: %d rows, %v; want 1", len(rows), err)
	}
	if ids, err := stuck.Requeue(ctx, opPool, []int64{bad}, ""); err != nil || len(ids) != 1 {
		t.Fatalf("requeue as the operator: %v, %v", ids, err)
	}
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 1 {
		t.Fatalf("deliver the requeued row: %d rows, %v; want 1", n, err)
	}
	if ids, err := stuck.Discard(ctx, opPool, []int64{bad}, "alice", "test"); err != nil || len(ids) != 1 {
		t.Errorf("discard as the operator: %v, %v", ids, err)
	}
	// relay resend and the audit log of every operator action.
	again := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("again")})[0]
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 1 {
		t.Fatalf("deliver a row to resend: %d rows, %v; want 1", n, err)
	}
	if ids, err := stuck.Resend(ctx, opPool, []int64{again}); err != nil || len(ids) != 1 {
		t.Errorf("resend as the operator: %v, %v", ids, err)
	}
	if err := stuck.Audit(ctx, opPool, stuck.AuditEntry{Operator: "alice", Source: stuck.SourceCLI, Action: "resend", IDs: []int64{again}}); err != nil {
		t.Errorf("audit as the operator: %v", err)
	}
	if _, err := stuck.RecentAudit(ctx, opPool, 10); err != nil {
		t.Errorf("read the audit log as the operator: %v", err)
	}
}

// createRole creates a role named prefix_<random> with the given grants
// ("INSERT ON schema.messages", …) and drops it when the test ends.
func createRole(t *testing.T, db *relaytest.DB, prefix string, grants ...string) string {
	t.Helper()
	ctx := context.Background()
	var b [4]byte
	_, _ = rand.Read(b[:])
	role := prefix + "_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		_, _ = db.Pool.Exec(context.Background(), "DROP OWNED BY "+role)
		_, _ = db.Pool.Exec(context.Background(), "DROP ROLE "+role)
	})
	stmts := []string{"CREATE ROLE " + role}
	for _, g := range grants {
		stmts = append(stmts, "GRANT "+g+" TO "+role)
	}
	for _, stmt := range stmts {
		if _, err := db.Pool.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	return role
}
