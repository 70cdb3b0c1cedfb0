// Package stuck is the operator's API over the outbox tables: list, show,
// requeue and discard the rows escalated to stuck_messages, resend sent
// rows, and the audit log of these actions. The relay command and the web
// console act through it; it does not depend on the delivery engine, only on
// the tables.
package stuck

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/relay/internal/pgstore"
)

// Querier is a *pgxpool.Pool, a *pgx.Conn or a pgx.Tx whose search_path is
// the outbox schema (see relay.PoolConfig).
type Querier = pgstore.Querier

// Row is a row in stuck_messages, with how many pending rows of its key it
// holds back.
type Row struct {
	ID          int64
	Topic       string
	Key         []byte
	Payload     []byte
	Headers     []byte // raw JSON
	CreatedAt   time.Time
	Attempts    int
	FirstError  string
	LastError   string
	ErrorKind   string // one of ErrorKinds
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

// Filter selects stuck rows. Zero fields match everything.
type Filter struct {
	Topic     string
	Key       []byte    // nil: any key
	Since     time.Time // escalated at or after
	ErrorKind string    // one of ErrorKinds; empty: any
	Limit     int       // 0: 100 (List only)
}

// args are the filter's query parameters $1 to $4: topic, key, since and
// error kind, each NULL when it matches everything.
func (f Filter) args() []any {
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

// The error kinds of stuck rows (Row.ErrorKind, Filter.ErrorKind).
const (
	RowFatal     = pgstore.ErrorKindRowFatal
	RowRetriable = pgstore.ErrorKindRowRetriable
	Expired      = pgstore.ErrorKindExpired
)

// ErrorKinds lists every error kind.
var ErrorKinds = pgstore.ErrorKinds

// ErrNotFound is returned for an id that is not in stuck_messages.
var ErrNotFound = errors.New("not found")

// List returns stuck rows in id order.
func List(ctx context.Context, q Querier, f Filter) ([]Row, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	a := f.args()
	rows, err := q.Query(ctx, listQuery, a[0], a[1], a[2], limit, a[3])
	if err != nil {
		return nil, fmt.Errorf("list stuck: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanRow)
	if err != nil {
		return nil, fmt.Errorf("list stuck: %w", err)
	}
	return out, nil
}

// Get returns one stuck row.
func Get(ctx context.Context, q Querier, id int64) (Row, error) {
	rows, err := q.Query(ctx, getQuery, id)
	if err != nil {
		return Row{}, fmt.Errorf("show stuck %d: %w", id, err)
	}
	s, err := pgx.CollectExactlyOneRow(rows, scanRow)
	if errors.Is(err, pgx.ErrNoRows) {
		return Row{}, fmt.Errorf("stuck row %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Row{}, fmt.Errorf("show stuck %d: %w", id, err)
	}
	return s, nil
}

func scanRow(r pgx.CollectableRow) (Row, error) {
	var s Row
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
	return changedIDs(ctx, q, "requeue", requeueQuery, idsArg, topicArg)
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
	return changedIDs(ctx, q, "discard", discardQuery, ids, op, why)
}

// changedIDs runs query, a statement that returns the id of each row it
// changed, and collects those ids; what names the action in its errors.
func changedIDs(ctx context.Context, q Querier, what, query string, args ...any) ([]int64, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return ids, nil
}

// Count returns how many stuck rows match f (its Limit aside), so that a
// list cut off at its limit can say how many rows it left out.
func Count(ctx context.Context, q Querier, f Filter) (int, error) {
	var n int
	if err := q.QueryRow(ctx, countQuery, f.args()...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count stuck: %w", err)
	}
	return n, nil
}

// Match is the short form of a stuck row that bulk actions select and
// confirm before acting.
type Match struct {
	ID        int64
	Topic     string
	ErrorKind string
	LastError string
}

// Matching returns every stuck row that matches f (its Limit aside), in id
// order.
func Matching(ctx context.Context, q Querier, f Filter) ([]Match, error) {
	return collectMatches(q.Query(ctx, matchingQuery, f.args()...))
}

// ByID returns the rows of ids that are in stuck_messages, in id order; an
// id that is not there is left out.
func ByID(ctx context.Context, q Querier, ids []int64) ([]Match, error) {
	return collectMatches(q.Query(ctx, byIDQuery, ids))
}

func collectMatches(rows pgx.Rows, err error) ([]Match, error) {
	if err != nil {
		return nil, fmt.Errorf("select stuck: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Match, error) {
		var m Match
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
