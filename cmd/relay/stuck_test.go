package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/outboxrelay/relay/internal/relaytest"
)

// stuckEnv points the CLI at a test's schema with two stuck rows (ids 10 and
// 20, topics a and b) and one pending row (11) of key k waiting behind row 10.
func stuckEnv(t *testing.T) (*relaytest.DB, map[string]string) {
	t.Helper()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	_, err := db.Pool.Exec(ctx, `
		INSERT INTO stuck_messages (id, topic, key, payload, headers, created_at, attempts, first_error, last_error, error_kind)
		VALUES (10, 'a', 'k', 'p1', '{"type":"x"}', now(), 1, 'MESSAGE_TOO_LARGE', 'MESSAGE_TOO_LARGE', 'row_fatal'),
		       (20, 'b', NULL, NULL, '{}', now(), 10, 'timeout', 'NOT_ENOUGH_REPLICAS', 'row_retriable')`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO messages (id, topic, key, payload) OVERRIDING SYSTEM VALUE VALUES (11, 'a', 'k', 'behind')`); err != nil {
		t.Fatal(err)
	}
	return db, map[string]string{"RELAY_DATABASE_URL": db.URL, "RELAY_SCHEMA": db.Schema, "USER": "alice"}
}

func TestStuckListAndShow(t *testing.T) {
	t.Parallel()
	_, env := stuckEnv(t)

	out, _, err := runCLI(t, env, "stuck", "list")
	if err != nil {
		t.Fatalf("stuck list: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "10 ") || !strings.Contains(lines[1], "MESSAGE_TOO_LARGE") || !strings.HasPrefix(lines[2], "20 ") {
		t.Fatalf("stuck list printed:\n%s\nwant a header and rows 10 and 20", out)
	}

	out, _, err = runCLI(t, env, "stuck", "list", "--topic", "a", "--json")
	if err != nil {
		t.Fatalf("stuck list --json: %v", err)
	}
	var rows []stuckJSON
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("stuck list --json is not JSON: %v\n%s", err, out)
	}
	if len(rows) != 1 || rows[0].ID != 10 || rows[0].Key == nil || *rows[0].Key != "k" || rows[0].Blocking != 1 {
		t.Fatalf("stuck list --topic a --json = %+v; want row 10, key k, blocking 1", rows)
	}

	out, _, err = runCLI(t, env, "stuck", "show", "20")
	if err != nil {
		t.Fatalf("stuck show: %v", err)
	}
	for _, want := range []string{"NOT_ENOUGH_REPLICAS", "timeout", "tombstone", "row_retriable"} {
		if !strings.Contains(out, want) {
			t.Errorf("stuck show 20 lacks %q:\n%s", want, out)
		}
	}
	if _, _, err := runCLI(t, env, "stuck", "show", "999"); exitCode(err) != 2 {
		t.Errorf("stuck show of a missing id: %v (exit %d), want exit 2", err, exitCode(err))
	}
}

func TestStuckRequeueAndDiscard(t *testing.T) {
	t.Parallel()
	db, env := stuckEnv(t)
	ctx := context.Background()

	if _, _, err := runCLI(t, env, "stuck", "requeue"); exitCode(err) != 2 {
		t.Errorf("requeue without a selection: exit %d, want 2", exitCode(err))
	}
	if _, _, err := runCLI(t, env, "stuck", "requeue", "10", "--all"); exitCode(err) != 2 {
		t.Errorf("requeue with ids and --all: exit %d, want 2", exitCode(err))
	}
	out, _, err := runCLI(t, env, "stuck", "requeue", "10")
	if err != nil || !strings.Contains(out, "requeued 1 row(s): 10") {
		t.Fatalf("requeue 10: %q, %v", out, err)
	}
	var status string
	var attempts int
	if err := db.Pool.QueryRow(ctx, `SELECT status, attempts FROM messages WHERE id = 10`).Scan(&status, &attempts); err != nil || status != "pending" || attempts != 0 {
		t.Fatalf("row 10 after requeue: %s, %d attempts, %v; want pending with 0", status, attempts, err)
	}

	if _, _, err := runCLI(t, env, "stuck", "discard", "20"); exitCode(err) != 2 {
		t.Errorf("discard without --yes: exit %d, want 2", exitCode(err))
	}
	out, _, err = runCLI(t, env, "stuck", "discard", "20", "--yes", "--reason", "obsolete")
	if err != nil || !strings.Contains(out, "discarded 1 row(s): 20") {
		t.Fatalf("discard 20 --yes: %q, %v", out, err)
	}
	var by, reason string
	if err := db.Pool.QueryRow(ctx, `SELECT discarded_by, reason FROM discarded_messages WHERE id = 20`).Scan(&by, &reason); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(by, "alice") || reason != "obsolete" {
		t.Errorf("audit: by %q, reason %q; want the operator from $USER and the reason", by, reason)
	}
	var left int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM stuck_messages`).Scan(&left); err != nil || left != 0 {
		t.Errorf("%d rows left in stuck_messages, want 0", left)
	}
}
