package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is what the operator functions need: a pool, a connection or a
// transaction whose search_path is the outbox schema.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// StuckRow is a row in stuck_messages, with how many pending rows of its key
// it holds back.
type StuckRow struct {
	ID          int64
	Topic       string
	Key         []byte
	Payload     []byte
	Headers     []byte // raw JSON
	CreatedAt   time.Time
	Attempts    int
	FirstError  string
	LastError   string
	ErrorKind   string
	EscalatedAt time.Time
	// UUID is the row's uuid, its records' outbox-uuid header; "" for a
	// row stuck before migration 00002 (a requeue gives it one).
	UUID     string
	Blocking int // pending rows of the same topic and key waiting behind it
}

// StuckFilter selects stuck rows. Zero fields match everything.
type StuckFilter struct {
	Topic string
	Key   []byte    // nil: any key
	Since time.Time // escalated at or after
	Limit int       // 0: 100
}

// ErrNotFound is returned for an id that is not in stuck_messages.
var ErrNotFound = errors.New("not found")

// ListStuck returns stuck rows in id order.
func ListStuck(ctx context.Context, q Querier, f StuckFilter) ([]StuckRow, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	var topic *string
	if f.Topic != "" {
		topic = &f.Topic
	}
	var since *time.Time
	if !f.Since.IsZero() {
		since = &f.Since
	}
	rows, err := q.Query(ctx, listStuckQuery, topic, f.Key, since, limit)
	if err != nil {
		return nil, fmt.Errorf("list stuck: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanStuck)
	if err != nil {
		return nil, fmt.Errorf("list stuck: %w", err)
	}
	return out, nil
}

// GetStuck returns one stuck row.
func GetStuck(ctx context.Context, q Querier, id int64) (StuckRow, error) {
	rows, err := q.Query(ctx, getStuckQuery, id)
	if err != nil {
		return StuckRow{}, fmt.Errorf("show stuck %d: %w", id, err)
	}
	s, err := pgx.CollectExactlyOneRow(rows, scanStuck)
	if errors.Is(err, pgx.ErrNoRows) {
		return StuckRow{}, fmt.Errorf("stuck row %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return StuckRow{}, fmt.Errorf("show stuck %d: %w", id, err)
	}
	return s, nil
}

func scanStuck(r pgx.CollectableRow) (StuckRow, error) {
	var s StuckRow
	var first *string
	err := r.Scan(&s.ID, &s.Topic, &s.Key, &s.Payload, &s.Headers, &s.CreatedAt, &s.Attempts,
		&first, &s.LastError, &s.ErrorKind, &s.EscalatedAt, &s.UUID, &s.Blocking)
	if first != nil {
		s.FirstError = *first
	}
	return s, err
}

// Requeue moves stuck rows back into messages with their original ids and
// attempts reset, so they are delivered again — before the rows of their key
// that they were holding back, since those have later ids. It selects rows
// by ids, or by topic; with neither it requeues everything. It returns the
// ids it moved, in order.
func Requeue(ctx context.Context, q Querier, ids []int64, topic string) ([]int64, error) {
	var topicArg *string
	if topic != "" {
		topicArg = &topic
	}
	var idsArg []int64
	if len(ids) > 0 {
		idsArg = ids
	}
	rows, err := q.Query(ctx, requeueQuery, idsArg, topicArg)
	if err != nil {
		return nil, fmt.Errorf("requeue: %w", err)
	}
	moved, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("requeue: %w", err)
	}
	return moved, nil
}

// Discard deletes stuck rows for good, keeping a copy in discarded_messages
// with who discarded them (the database role, plus operator if given) and
// why. It returns the ids it discarded.
func Discard(ctx context.Context, q Querier, ids []int64, operator, reason string) ([]int64, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	var op, why *string
	if operator != "" {
		op = &operator
	}
	if reason != "" {
		why = &reason
	}
	rows, err := q.Query(ctx, discardQuery, ids, op, why)
	if err != nil {
		return nil, fmt.Errorf("discard: %w", err)
	}
	gone, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("discard: %w", err)
	}
	return gone, nil
}
