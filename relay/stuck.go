package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	UUID string
	// The row's delivery options (see migration 00005); nil when unset.
	DeliverAfter *time.Time
	ExpiresAt    *time.Time
	Partition    *int32
	Blocking     int // pending rows of the same topic and key waiting behind it
}

// StuckFilter selects stuck rows. Zero fields match everything.
type StuckFilter struct {
	Topic     string
	Key       []byte    // nil: any key
	Since     time.Time // escalated at or after
	ErrorKind string    // one of ErrorKinds; empty: any
	Limit     int       // 0: 100 (ListStuck only)
}

// args are the filter's query parameters $1 to $4: topic, key, since and
// error kind, each NULL when it matches everything.
func (f StuckFilter) args() []any {
	var topic, kind *string
	if f.Topic != "" {
		topic = &f.Topic
	}
	if f.ErrorKind != "" {
		kind = &f.ErrorKind
	}
	var since *time.Time
	if !f.Since.IsZero() {
		since = &f.Since
	}
	return []any{topic, f.Key, since, kind}
}

// ValidErrorKind reports whether kind is one of ErrorKinds.
func ValidErrorKind(kind string) bool { return slices.Contains(ErrorKinds, kind) }

// ErrNotFound is returned for an id that is not in stuck_messages.
var ErrNotFound = errors.New("not found")

// ListStuck returns stuck rows in id order.
func ListStuck(ctx context.Context, q Querier, f StuckFilter) ([]StuckRow, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	a := f.args()
	rows, err := q.Query(ctx, listStuckQuery, a[0], a[1], a[2], limit, a[3])
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
		&first, &s.LastError, &s.ErrorKind, &s.EscalatedAt, &s.UUID,
		&s.DeliverAfter, &s.ExpiresAt, &s.Partition, &s.Blocking)
	if first != nil {
		s.FirstError = *first
	}
	return s, err
}

// Requeue moves stuck rows back into messages with their original ids and
// attempts reset, so they are delivered again — before the rows of their key
// that they were holding back, since those have later ids. It selects rows
// by ids, or by topic; with neither it requeues everything. It returns the
// ids it moved, in order. A requeued row keeps its deliver_after and
// partition, and loses its expires_at: requeueing decides to deliver it
// however late.
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

// CountStuck returns how many stuck rows match f (its Limit aside), so that
// a list cut off at its limit can say how many rows it left out.
func CountStuck(ctx context.Context, q Querier, f StuckFilter) (int, error) {
	var n int
	if err := q.QueryRow(ctx, countStuckQuery, f.args()...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count stuck: %w", err)
	}
	return n, nil
}

// StuckMatch is the short form of a stuck row that bulk actions select and
// confirm before acting.
type StuckMatch struct {
	ID        int64
	Topic     string
	ErrorKind string
	LastError string
}

// MatchStuck returns every stuck row that matches f (its Limit aside), in id
// order.
func MatchStuck(ctx context.Context, q Querier, f StuckFilter) ([]StuckMatch, error) {
	return collectMatches(q.Query(ctx, matchStuckQuery, f.args()...))
}

// StuckByID returns the rows of ids that are in stuck_messages, in id order;
// an id that is not there is left out.
func StuckByID(ctx context.Context, q Querier, ids []int64) ([]StuckMatch, error) {
	return collectMatches(q.Query(ctx, stuckByIDQuery, ids))
}

func collectMatches(rows pgx.Rows, err error) ([]StuckMatch, error) {
	if err != nil {
		return nil, fmt.Errorf("select stuck: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (StuckMatch, error) {
		var m StuckMatch
		err := r.Scan(&m.ID, &m.Topic, &m.ErrorKind, &m.LastError)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("select stuck: %w", err)
	}
	return out, nil
}

// Missing returns the ids of want that found lacks, in the order of want.
func Missing(want, found []int64) []int64 {
	have := make(map[int64]bool, len(found))
	for _, id := range found {
		have[id] = true
	}
	var out []int64
	for _, id := range want {
		if !have[id] {
			out = append(out, id)
		}
	}
	return out
}

// BlockedRow is a pending row held back by an earlier stuck row of its key.
type BlockedRow struct {
	ID        int64
	CreatedAt time.Time
	Attempts  int
}

// BlockedBehind returns up to limit pending rows of the stuck row id's topic
// and key that wait behind it, oldest first: the chain a requeue or discard
// of id releases.
func BlockedBehind(ctx context.Context, q Querier, id int64, limit int) ([]BlockedRow, error) {
	rows, err := q.Query(ctx, blockedBehindQuery, id, limit)
	if err != nil {
		return nil, fmt.Errorf("rows behind stuck %d: %w", id, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (BlockedRow, error) {
		var b BlockedRow
		err := r.Scan(&b.ID, &b.CreatedAt, &b.Attempts)
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("rows behind stuck %d: %w", id, err)
	}
	return out, nil
}

// stuckWhere is the filter of countStuckQuery and matchStuckQuery; its
// parameters are StuckFilter.args.
const stuckWhere = `
WHERE ($1::text IS NULL OR s.topic = $1)
  AND ($2::bytea IS NULL OR s.key = $2)
  AND ($3::timestamptz IS NULL OR s.escalated_at >= $3)
  AND ($4::text IS NULL OR s.error_kind = $4)`

const countStuckQuery = `SELECT count(*) FROM stuck_messages s` + stuckWhere

const matchStuckQuery = `SELECT s.id, s.topic, s.error_kind, s.last_error FROM stuck_messages s` + stuckWhere + `
ORDER BY s.id`

const stuckByIDQuery = `
SELECT s.id, s.topic, s.error_kind, s.last_error FROM stuck_messages s
WHERE s.id = ANY($1) ORDER BY s.id`

// blockedBehindQuery uses messages_pending_key_idx: the pending rows of the
// stuck row's topic and key with later ids.
const blockedBehindQuery = `
SELECT m.id, m.created_at, m.attempts
FROM stuck_messages s
JOIN messages m ON m.topic = s.topic AND m.key = s.key AND m.id > s.id
WHERE s.id = $1 AND m.status = 'pending' AND m.key IS NOT NULL
ORDER BY m.id
LIMIT $2`
