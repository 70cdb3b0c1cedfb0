package relay

// The operator API's SQL (see stuck.go). Names are unqualified: the pool's
// search_path is the configured schema, so these stay constant whatever the
// schema is called.

// stuckSelect reads stuck rows for listStuckQuery and getStuckQuery; the last
// column counts the pending rows of the same topic and key behind each.
const stuckSelect = `
SELECT s.id, s.topic, s.key, s.payload, s.headers, s.created_at, s.attempts,
       s.first_error, s.last_error, s.error_kind, s.escalated_at, COALESCE(s.uuid::text, ''),
       s.deliver_after, s.expires_at, s.partition,
       (SELECT count(*) FROM messages m
        WHERE m.status = 'pending' AND m.key IS NOT NULL
          AND m.topic = s.topic AND m.key = s.key AND m.id > s.id)::int
FROM stuck_messages s`

const listStuckQuery = stuckSelect + `
WHERE ($1::text IS NULL OR s.topic = $1)
  AND ($2::bytea IS NULL OR s.key = $2)
  AND ($3::timestamptz IS NULL OR s.escalated_at >= $3)
  AND ($5::text IS NULL OR s.error_kind = $5)
ORDER BY s.id
LIMIT $4`

const getStuckQuery = stuckSelect + `
WHERE s.id = $1`

// requeueQuery moves stuck rows back to messages, keeping their ids and
// uuids (a row stuck before migration 00002 has none and gets one). $1 ids
// (NULL: any), $2 topic (NULL: any).
//
// The row keeps its delivery options but expires_at: requeueing is the
// operator's decision to deliver the row, however late (an expiry kept
// would only escalate an expired row again).
const requeueQuery = `
WITH moved AS (
    DELETE FROM stuck_messages
    WHERE ($1::bigint[] IS NULL OR id = ANY($1)) AND ($2::text IS NULL OR topic = $2)
    RETURNING id, topic, key, payload, headers, created_at, uuid, deliver_after, partition
)
INSERT INTO messages (id, topic, key, payload, headers, created_at, uuid, deliver_after, partition)
OVERRIDING SYSTEM VALUE
SELECT id, topic, key, payload, headers, created_at, COALESCE(uuid, gen_random_uuid()), deliver_after, partition
FROM moved ORDER BY id
RETURNING id`

// discardQuery deletes stuck rows and keeps an audit copy. $2 operator name
// (NULL: only the database role), $3 reason.
const discardQuery = `
WITH gone AS (
    DELETE FROM stuck_messages WHERE id = ANY($1)
    RETURNING id, topic, key, payload, headers, created_at, attempts, last_error, escalated_at, uuid,
              deliver_after, expires_at, partition
)
INSERT INTO discarded_messages (id, topic, key, payload, headers, created_at, attempts,
                                last_error, escalated_at, uuid, deliver_after, expires_at, partition,
                                discarded_by, reason)
SELECT id, topic, key, payload, headers, created_at, attempts, last_error, escalated_at, uuid,
       deliver_after, expires_at, partition,
       current_user || COALESCE(' (' || $2::text || ')', ''), $3::text
FROM gone ORDER BY id
RETURNING id`
