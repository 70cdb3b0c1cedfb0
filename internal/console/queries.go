package console

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/stuck"
)

// overview is what the console's first page shows.
type overview struct {
	Backlog      []topicBacklog
	Stuck        []topicStuck
	Blocked      int64
	Recent       []stuck.SentRow
	PerMinute    []minuteCount
	PendingTotal int64
	StuckTotal   int64
	Oldest       time.Time
}

type topicBacklog struct {
	Topic   string
	Pending int64
	Oldest  time.Time
}

type topicStuck struct {
	Topic   string
	Stuck   int64
	Blocked int64
	Oldest  time.Time
}

type minuteCount struct {
	Minute time.Time
	Count  int64
}

func readOverview(ctx context.Context, pool *pgxpool.Pool) (overview, error) {
	var ov overview
	rows, err := pool.Query(ctx, backlogQuery)
	if err != nil {
		return ov, fmt.Errorf("backlog: %w", err)
	}
	if ov.Backlog, err = pgx.CollectRows(rows, pgx.RowToStructByPos[topicBacklog]); err != nil {
		return ov, fmt.Errorf("backlog: %w", err)
	}
	for _, b := range ov.Backlog {
		ov.PendingTotal += b.Pending
		if ov.Oldest.IsZero() || b.Oldest.Before(ov.Oldest) {
			ov.Oldest = b.Oldest
		}
	}
	if rows, err = pool.Query(ctx, stuckByTopicQuery); err != nil {
		return ov, fmt.Errorf("stuck by topic: %w", err)
	}
	if ov.Stuck, err = pgx.CollectRows(rows, pgx.RowToStructByPos[topicStuck]); err != nil {
		return ov, fmt.Errorf("stuck by topic: %w", err)
	}
	for _, s := range ov.Stuck {
		ov.StuckTotal += s.Stuck
		ov.Blocked += s.Blocked
	}
	if rows, err = pool.Query(ctx, recentSentQuery); err != nil {
		return ov, fmt.Errorf("recent sent: %w", err)
	}
	if ov.Recent, err = pgx.CollectRows(rows, pgx.RowToStructByPos[stuck.SentRow]); err != nil {
		return ov, fmt.Errorf("recent sent: %w", err)
	}
	if rows, err = pool.Query(ctx, perMinuteQuery); err != nil {
		return ov, fmt.Errorf("delivery rate: %w", err)
	}
	if ov.PerMinute, err = pgx.CollectRows(rows, pgx.RowToStructByPos[minuteCount]); err != nil {
		return ov, fmt.Errorf("delivery rate: %w", err)
	}
	return ov, nil
}

// backlogQuery walks the pending rows (messages_pending_idx).
const backlogQuery = `
SELECT topic, count(*), min(created_at) FROM messages
WHERE status = 'pending'
GROUP BY topic ORDER BY topic`

// stuckByTopicQuery counts, per topic, the stuck rows and the pending rows
// they hold back (the blocked_messages view).
const stuckByTopicQuery = `
SELECT s.topic, s.n, COALESCE(b.n, 0), s.oldest
FROM (SELECT topic, count(*) AS n, min(escalated_at) AS oldest FROM stuck_messages GROUP BY topic) s
LEFT JOIN (SELECT topic, count(*) AS n FROM blocked_messages GROUP BY topic) b USING (topic)
ORDER BY s.topic`

// recentSentQuery uses messages_sent_at_idx.
const recentSentQuery = `
SELECT id, topic, key, sent_at, kafka_partition, kafka_offset FROM messages
WHERE status = 'sent'
ORDER BY sent_at DESC LIMIT 20`

// perMinuteQuery counts the rows sent per minute over the last hour, from
// the retained sent rows (none when RELAY_SENT_RETENTION=0).
const perMinuteQuery = `
SELECT date_trunc('minute', sent_at), count(*) FROM messages
WHERE status = 'sent' AND sent_at > now() - interval '1 hour'
GROUP BY 1 ORDER BY 1`

// bar is one minute of the delivery chart.
type bar struct {
	X, Y, H int
	Label   string
}

// chart lays out the last hour as 60 bars of an SVG 600x100.
func chart(per []minuteCount) []bar {
	if len(per) == 0 {
		return nil
	}
	var peak int64
	for _, m := range per {
		peak = max(peak, m.Count)
	}
	now := time.Now().Truncate(time.Minute)
	var bars []bar
	for _, m := range per {
		ago := int(now.Sub(m.Minute) / time.Minute)
		if ago < 0 || ago >= 60 {
			continue
		}
		h := int(m.Count * 96 / peak)
		bars = append(bars, bar{X: (59 - ago) * 10, Y: 100 - h, H: max(h, 1),
			Label: fmt.Sprintf("%s: %d rows", m.Minute.UTC().Format("15:04"), m.Count)})
	}
	return bars
}
