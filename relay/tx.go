package relay

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// querier is what the claim and the outcome's record need of a transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// batchTx is a batch's transaction on a pooled connection of its own. Its
// BEGIN goes out with its first statements rather than in a round trip of
// its own (as pgx's Begin does): every claim opens a transaction, most of
// them at a trickle of rows, and many find nothing.
type batchTx struct {
	conn   *pgxpool.Conn
	begun  bool // BEGIN was sent
	closed bool // committed, rolled back or given up; the connection went back to the pool
}

var _ querier = (*batchTx)(nil)

// beginBatch acquires a connection for a transaction that starts with its
// first statement.
func beginBatch(ctx context.Context, pool *pgxpool.Pool) (*batchTx, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return &batchTx{conn: conn}, nil
}

// begin sends BEGIN on its own, for a first statement that is not a batch.
func (t *batchTx) begin(ctx context.Context) error {
	if t.begun {
		return nil
	}
	if _, err := t.conn.Exec(ctx, "begin"); err != nil {
		return err
	}
	t.begun = true
	return nil
}

func (t *batchTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := t.begin(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return t.conn.Exec(ctx, sql, args...)
}

func (t *batchTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.begin(ctx); err != nil {
		return nil, err
	}
	return t.conn.Query(ctx, sql, args...)
}

func (t *batchTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := t.begin(ctx); err != nil {
		return errRow{err}
	}
	return t.conn.QueryRow(ctx, sql, args...)
}

// SendBatch sends b, led by BEGIN when the transaction has not begun: one
// round trip for both. The caller reads b's results as usual.
func (t *batchTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if t.begun {
		return t.conn.SendBatch(ctx, b)
	}
	led := &pgx.Batch{QueuedQueries: append([]*pgx.QueuedQuery{{SQL: "begin"}}, b.QueuedQueries...)}
	br := t.conn.SendBatch(ctx, led)
	if _, err := br.Exec(); err != nil {
		return errBatch{br, err}
	}
	t.begun = true
	return br
}

// Commit commits and returns the connection to the pool. A transaction that
// failed earlier reports pgx.ErrTxCommitRollback, as pgx's own does.
func (t *batchTx) Commit(ctx context.Context) error {
	if t.closed {
		return pgx.ErrTxClosed
	}
	defer t.release()
	if !t.begun {
		return nil
	}
	tag, err := t.conn.Exec(ctx, "commit")
	if err != nil {
		return err
	}
	if tag.String() == "ROLLBACK" {
		return pgx.ErrTxCommitRollback
	}
	return nil
}

// Rollback rolls back, unless the transaction already ended, and returns
// the connection to the pool. A connection left inside a transaction (the
// rollback failed) is closed by the pool rather than reused.
func (t *batchTx) Rollback(ctx context.Context) error {
	if t.closed {
		return pgx.ErrTxClosed
	}
	defer t.release()
	if !t.begun {
		return nil
	}
	_, err := t.conn.Exec(ctx, "rollback")
	return err
}

func (t *batchTx) release() {
	t.closed = true
	t.conn.Release()
}

// errRow is a pgx.Row that reports err.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// errBatch reports err, the failure of the BEGIN that led the batch, for
// every result.
type errBatch struct {
	pgx.BatchResults
	err error
}

func (b errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b errBatch) Query() (pgx.Rows, error)         { return nil, b.err }
func (b errBatch) QueryRow() pgx.Row                { return errRow{b.err} }
func (b errBatch) Close() error                     { _ = b.BatchResults.Close(); return b.err }
