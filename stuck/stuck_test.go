package stuck_test

import (
	"context"
	"strings"
	"testing"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/stuck"
)

func TestDiscardKeepsAnAuditCopy(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	var id int64
	if err := db.Pool.QueryRow(ctx, `INSERT INTO stuck_messages (id, topic, key, payload, created_at, attempts, last_error, error_kind)
		VALUES (42, 't', 'k', 'p', now(), 3, 'boom', 'row_retriable') RETURNING id`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	gone, err := stuck.Discard(ctx, db.Pool, []int64{id, 999}, "alice", "obsolete event")
	if err != nil || len(gone) != 1 || gone[0] != id {
		t.Fatalf("Discard = %v, %v; want [%d] (999 does not exist)", gone, err, id)
	}
	if _, err := stuck.Get(ctx, db.Pool, id); err == nil {
		t.Errorf("row %d still in stuck_messages after discard", id)
	}
	var by, reason string
	if err := db.Pool.QueryRow(ctx, `SELECT discarded_by, reason FROM discarded_messages WHERE id = $1`, id).Scan(&by, &reason); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(by, "alice") || !strings.Contains(by, "postgres") || reason != "obsolete event" {
		t.Errorf("audit row: by %q reason %q; want the role, the operator and the reason", by, reason)
	}
}
