package stuck

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Audit sources: where an operator's action came from.
const (
	SourceCLI     = "cli"
	SourceConsole = "console"
)

// AuditEntry is one operator action for the audit_log table.
type AuditEntry struct {
	// Operator is the name the operator gave; the database role is
	// recorded with it.
	Operator string
	Source   string // SourceCLI or SourceConsole
	Action   string // requeue, discard or resend
	IDs      []int64
	// Detail is the filter or the reason, as the operator gave it.
	Detail string
}

// AuditRecord is a row of audit_log.
type AuditRecord struct {
	ID int64
	At time.Time
	AuditEntry
}

// Audit writes e to audit_log. Run it in the transaction of the action, so
// that the action and its record commit together.
func Audit(ctx context.Context, q Querier, e AuditEntry) error {
	var op, detail *string
	if e.Operator != "" {
		op = &e.Operator
	}
	if e.Detail != "" {
		detail = &e.Detail
	}
	ids := e.IDs
	if ids == nil {
		ids = []int64{}
	}
	if _, err := q.Exec(ctx, auditQuery, op, e.Source, e.Action, ids, detail); err != nil {
		return fmt.Errorf("audit %s: %w", e.Action, err)
	}
	return nil
}

// RecentAudit returns the newest limit entries of audit_log, newest first.
func RecentAudit(ctx context.Context, q Querier, limit int) ([]AuditRecord, error) {
	rows, err := q.Query(ctx, recentAuditQuery, limit)
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AuditRecord, error) {
		var a AuditRecord
		var detail *string
		err := r.Scan(&a.ID, &a.At, &a.Operator, &a.Source, &a.Action, &a.IDs, &detail)
		if detail != nil {
			a.Detail = *detail
		}
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("read audit log: %w", err)
	}
	return out, nil
}

// auditQuery records current_user with the operator's name, as
// discarded_messages does.
const auditQuery = `
INSERT INTO audit_log (operator, source, action, row_ids, detail)
VALUES (current_user || COALESCE(' (' || $1::text || ')', ''), $2, $3, $4, $5)`

const recentAuditQuery = `
SELECT id, at, operator, source, action, row_ids, detail FROM audit_log
ORDER BY id DESC LIMIT $1`
