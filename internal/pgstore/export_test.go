package pgstore

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// QueryRow runs sql in the batch's transaction, after the write-back it
// holds, for tests that look at what the transaction did (pg_stat_xact_*).
func (b *BatchTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if b.writes != nil {
		if err := b.conn.SendBatch(ctx, b.writes).Close(); err != nil {
			return errRow{err}
		}
		b.writes, b.steps = nil, nil
	}
	return b.conn.QueryRow(ctx, sql, args...)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }
