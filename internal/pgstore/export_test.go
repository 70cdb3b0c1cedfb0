package pgstore

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// QueryRow runs sql in the batch's transaction, for tests that look at what
// the transaction did (pg_stat_xact_*).
func (b *BatchTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return b.tx.QueryRow(ctx, sql, args...)
}
