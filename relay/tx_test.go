package relay_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/relay/relaytest"
)

// The batch transaction sends its BEGIN with its first batch; what that
// batch does must still be one transaction that lasts until Commit.
func TestBatchTxBeginsWithItsFirstBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := relaytest.NewDB(t)
	id := db.Insert(t, relaytest.Message{Topic: "orders", Payload: []byte("x")})[0]

	tx, err := relay.BeginBatchTx(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	var b pgx.Batch
	b.Queue(`SET LOCAL synchronous_commit = off`)
	b.Queue(`SELECT id FROM messages WHERE id = $1 FOR UPDATE`, id)
	br := tx.SendBatch(ctx, &b)
	if _, err := br.Exec(); err != nil {
		t.Fatal(err)
	}
	var locked int64
	if err := br.QueryRow().Scan(&locked); err != nil || locked != id {
		t.Fatalf("locked %d, %v; want %d", locked, err, id)
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}

	// Past the batch's end, the SET LOCAL and the row lock still hold: the
	// batch ran inside a transaction, not in an implicit one of its own.
	var setting string
	if err := tx.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&setting); err != nil || setting != "off" {
		t.Errorf("synchronous_commit after the batch = %q, %v; want off", setting, err)
	}
	lockNowait := func() error {
		ptx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = ptx.Rollback(ctx) }()
		_, err = ptx.Exec(ctx, `SELECT id FROM messages WHERE id = $1 FOR UPDATE NOWAIT`, id)
		return err
	}
	var pgErr *pgconn.PgError
	if err := lockNowait(); !errors.As(err, &pgErr) || pgErr.Code != "55P03" {
		t.Errorf("another session locked the row while the batch held it: %v", err)
	}

	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := lockNowait(); err != nil {
		t.Errorf("row still locked after commit: %v", err)
	}
	if err := tx.Rollback(ctx); !errors.Is(err, pgx.ErrTxClosed) {
		t.Errorf("rollback after commit: %v, want pgx.ErrTxClosed", err)
	}
	if n := db.Pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("%d connections still acquired after commit", n)
	}
}

// A transaction that failed cannot commit, and says so, as pgx's own does.
func TestBatchTxCommitAfterAnErrorReportsRollback(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := relaytest.NewDB(t)
	tx, err := relay.BeginBatchTx(ctx, db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT 1/0`); err == nil {
		t.Fatal("1/0 did not fail")
	}
	if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxCommitRollback) {
		t.Errorf("commit after an error: %v, want pgx.ErrTxCommitRollback", err)
	}
	if n := db.Pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("%d connections still acquired after the failed commit", n)
	}
}
