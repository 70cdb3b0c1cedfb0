package pgstore

import (
	"context"
	"fmt"
	"time"
)

// backlogQuery reads the age of the oldest pending row (lowest id first;
// a delayed row's age counts from its deliver_after),
// the number of pending rows, of stuck rows, and of pending rows behind a
// stuck row of their key. The first two go through the pending index: cheap
// however much sent history is kept; the last starts from the stuck keys, so
// it costs nothing while stuck_messages is empty.
const backlogQuery = `
SELECT COALESCE((SELECT GREATEST(now() - GREATEST(created_at, deliver_after), interval '0')
                  FROM messages WHERE status = 'pending' ORDER BY id LIMIT 1), interval '0'),
       (SELECT count(*) FROM messages WHERE status = 'pending'),
       (SELECT count(*) FROM stuck_messages),
       (SELECT COALESCE(sum(c.n), 0)::bigint
        FROM (SELECT topic, key, min(id) AS id FROM stuck_messages
              WHERE key IS NOT NULL GROUP BY topic, key) s,
        LATERAL (SELECT count(*) AS n FROM messages m
                 WHERE m.status = 'pending' AND m.key IS NOT NULL
                   AND m.topic = s.topic AND m.key = s.key AND m.id > s.id) c)`

// Backlog is what waits in the outbox.
type Backlog struct {
	Oldest  time.Duration // age of the oldest pending row
	Pending int64
	Stuck   int64
	Behind  int64 // pending rows with a stuck row of their key before them
}

// Backlog reads the oldest pending row's age and the pending and stuck
// counts.
func (s *Store) Backlog(ctx context.Context) (Backlog, error) {
	var b Backlog
	if err := s.pool.QueryRow(ctx, backlogQuery).Scan(&b.Oldest, &b.Pending, &b.Stuck, &b.Behind); err != nil {
		return b, fmt.Errorf("backlog: %w", err)
	}
	return b, nil
}
