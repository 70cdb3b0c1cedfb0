package stuck_test

import (
	"context"
	"errors"
	"slices"
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

// A filter selects the same rows whether listed, counted or matched; ByID
// leaves out the ids that are not stuck (Missing names them), and
// BlockedBehind lists the pending rows of the stuck row's key after it.
func TestFilterAndSelection(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO stuck_messages (id, topic, key, payload, created_at, attempts, last_error, error_kind)
		VALUES (10, 'a', 'k', 'p', now(), 1, 'too large', $1), (20, 'b', 'k', 'p', now(), 10, 'timeout', $2), (30, 'a', 'j', 'p', now(), 1, 'gone', $3)`,
		stuck.RowFatal, stuck.RowRetriable, stuck.Expired); err != nil {
		t.Fatal(err)
	}
	// Pending rows after them: 40 behind row 10, 41 behind row 20.
	behind := []int64{40, 41}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO messages (id, topic, key, payload) OVERRIDING SYSTEM VALUE
		VALUES (40, 'a', 'k', 'next'), (41, 'b', 'k', 'next')`); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		f    stuck.Filter
		want []int64
	}{
		{stuck.Filter{}, []int64{10, 20, 30}},
		{stuck.Filter{Topic: "a"}, []int64{10, 30}},
		{stuck.Filter{Key: []byte("k")}, []int64{10, 20}},
		{stuck.Filter{ErrorKind: stuck.Expired}, []int64{30}},
		{stuck.Filter{Topic: "a", ErrorKind: stuck.RowRetriable}, nil},
	} {
		rows, err := stuck.List(ctx, db.Pool, tt.f)
		if err != nil {
			t.Fatal(err)
		}
		matches, err := stuck.Matching(ctx, db.Pool, tt.f)
		if err != nil {
			t.Fatal(err)
		}
		listed := ids(rows, func(r stuck.Row) int64 { return r.ID })
		matched := ids(matches, func(m stuck.Match) int64 { return m.ID })
		n, err := stuck.Count(ctx, db.Pool, tt.f)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(listed, tt.want) || !slices.Equal(matched, tt.want) || n != len(tt.want) {
			t.Errorf("filter %+v: listed %v, matched %v, counted %d; want %v", tt.f, listed, matched, n, tt.want)
		}
	}
	if rows, err := stuck.List(ctx, db.Pool, stuck.Filter{Limit: 2}); err != nil || len(rows) != 2 || rows[0].ID != 10 || rows[0].Blocking != 1 || rows[1].Blocking != 1 {
		t.Errorf("List with Limit 2: %+v, %v; want rows 10 and 20, each holding back 1 row", rows, err)
	}

	found, err := stuck.ByID(ctx, db.Pool, []int64{30, 10, 99})
	if err != nil {
		t.Fatal(err)
	}
	if len(found) != 2 || found[0].ID != 10 || found[0].ErrorKind != stuck.RowFatal || found[0].LastError != "too large" || found[1].ID != 30 {
		t.Errorf("ByID(30, 10, 99) = %+v; want rows 10 and 30 in id order", found)
	}
	if missing := stuck.Missing([]int64{30, 10, 99}, []int64{10, 30}); !slices.Equal(missing, []int64{99}) {
		t.Errorf("Missing = %v, want [99]", missing)
	}

	blocked, err := stuck.BlockedBehind(ctx, db.Pool, 10, 50)
	if err != nil || len(blocked) != 1 || blocked[0].ID != behind[0] {
		t.Errorf("BlockedBehind(10) = %+v, %v; want row %d alone (row %d is of another topic)", blocked, err, behind[0], behind[1])
	}
	if _, err := stuck.Get(ctx, db.Pool, 99); !errors.Is(err, stuck.ErrNotFound) {
		t.Errorf("Get(99) = %v, want ErrNotFound", err)
	}
}

// ids returns the id of each row.
func ids[T any](rows []T, id func(T) int64) []int64 {
	var out []int64
	for _, r := range rows {
		out = append(out, id(r))
	}
	return out
}
