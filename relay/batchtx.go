package relay

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// batchTx is the transaction of one batch, on a pool connection of its own.
// It spends fewer round trips than pgx.Tx, whose BEGIN and COMMIT each wait
// for their own answer: every round trip wakes the relay's backend, and at
// a few rows a batch those wake-ups were most of what delivery cost the
// database. BEGIN goes with the batch's first statements (SendBatch), and
// the statements that record the outcome go with COMMIT (see deferred and
// commit), so a batch costs two round trips: claim, and record-and-commit.
type batchTx struct {
	pc     *pgxpool.Conn
	conn   *pgx.Conn
	begun  bool
	closed bool
}

var _ pgx.Tx = (*batchTx)(nil)

// beginBatch acquires a connection for a batch. The transaction itself
// begins with the first statement sent.
func beginBatch(ctx context.Context, pool *pgxpool.Pool) (*batchTx, error) {
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return &batchTx{pc: pc, conn: pc.Conn()}, nil
}

// begin sends BEGIN on its own, for a first statement that is not a batch.
func (t *batchTx) begin(ctx context.Context) error {
	if t.begun {
		return nil
	}
	if t.closed {
		return pgx.ErrTxClosed
	}
	if _, err := t.conn.Exec(ctx, "begin isolation level read committed"); err != nil {
		return err
	}
	t.begun = true
	return nil
}

// SendBatch sends b, preceded by BEGIN in the same round trip when the
// transaction has not begun yet.
func (t *batchTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if t.closed {
		return errBatch{pgx.ErrTxClosed}
	}
	if t.begun {
		return t.conn.SendBatch(ctx, b)
	}
	withBegin := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(b.QueuedQueries)+1)}
	withBegin.Queue("begin isolation level read committed")
	withBegin.QueuedQueries = append(withBegin.QueuedQueries, b.QueuedQueries...)
	br := t.conn.SendBatch(ctx, withBegin)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return errBatch{err}
	}
	t.begun = true
	return br
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

// Commit commits the transaction; commitDeferred is the batch's usual way.
func (t *batchTx) Commit(ctx context.Context) error {
	return t.commitDeferred(ctx, &deferred{batchTx: t})
}

// commitDeferred sends the statements d collected, then COMMIT, in one
// round trip, and releases the connection. A statement that fails aborts
// the transaction: nothing of it is kept.
func (t *batchTx) commitDeferred(ctx context.Context, d *deferred) error {
	if t.closed {
		return pgx.ErrTxClosed
	}
	if !t.begun {
		t.release()
		return nil // nothing was sent, nothing to commit
	}
	d.b.Queue("commit")
	br := t.conn.SendBatch(ctx, &d.b)
	var err error
	for i := range d.b.QueuedQueries {
		var tag pgconn.CommandTag
		tag, err = br.Exec()
		if err != nil {
			if i < len(d.labels) {
				err = fmt.Errorf("%s: %w", d.labels[i], err)
			}
			break
		}
		if i == len(d.b.QueuedQueries)-1 && tag.String() == "ROLLBACK" {
			err = pgx.ErrTxCommitRollback
		}
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// The connection may still be in the failed transaction.
		_ = t.Rollback(context.WithoutCancel(ctx))
		return err
	}
	t.closed = true
	t.release()
	return nil
}

// Rollback ends the transaction, if it is still open, and releases the
// connection. After Commit it returns pgx.ErrTxClosed, as pgx.Tx does.
func (t *batchTx) Rollback(ctx context.Context) error {
	if t.closed {
		return pgx.ErrTxClosed
	}
	t.closed = true
	var err error
	if t.begun {
		_, err = t.conn.Exec(ctx, "rollback")
	}
	if err != nil {
		// A connection that failed mid-transaction goes, not back to
		// the pool.
		_ = t.conn.Close(ctx)
	}
	t.release()
	return err
}

func (t *batchTx) release() {
	if t.pc != nil {
		t.pc.Release()
		t.pc = nil
	}
}

func (t *batchTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := t.begin(ctx); err != nil {
		return nil, err
	}
	return t.conn.Begin(ctx) // a savepoint: pgx sees the open transaction
}

func (t *batchTx) CopyFrom(ctx context.Context, table pgx.Identifier, cols []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.begin(ctx); err != nil {
		return 0, err
	}
	return t.conn.CopyFrom(ctx, table, cols, src)
}

func (t *batchTx) LargeObjects() pgx.LargeObjects { return pgx.LargeObjects{} }

func (t *batchTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.conn.Prepare(ctx, name, sql)
}

func (t *batchTx) Conn() *pgx.Conn { return t.conn }

// deferred is a view of a batchTx whose Exec only queues the statement, to
// be sent with COMMIT (commitDeferred). It serves the statements whose
// results nobody reads before the commit: the record of the outcome.
type deferred struct {
	*batchTx
	b      pgx.Batch
	labels []string
}

func (d *deferred) Exec(_ context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	d.b.Queue(sql, args...)
	d.labels = append(d.labels, statementLabel(sql))
	return pgconn.CommandTag{}, nil
}

// statementLabel names a deferred statement in an error.
func statementLabel(sql string) string {
	switch sql {
	case markSentQuery:
		return "mark sent"
	case deleteSentQuery:
		return "delete sent"
	case markFailedQuery:
		return "mark failed"
	case escalateQuery:
		return "escalate"
	}
	return "record"
}

// errBatch is the BatchResults of a batch that could not be sent.
type errBatch struct{ err error }

func (e errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, e.err }
func (e errBatch) Query() (pgx.Rows, error)         { return nil, e.err }
func (e errBatch) QueryRow() pgx.Row                { return errRow(e) }
func (e errBatch) Close() error                     { return e.err }
func (e errBatch) Tx() pgx.Tx                       { return nil }

// errRow is the Row of a statement that could not be sent.
type errRow struct{ err error }

func (e errRow) Scan(...any) error { return e.err }
