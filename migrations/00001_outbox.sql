-- The outbox: applications INSERT into messages inside their own transaction;
-- the relay claims pending rows, produces them to Kafka and marks them sent.
-- Names are unqualified: the relay runs this with search_path set to its schema.

-- +goose Up
CREATE TABLE messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic           text        NOT NULL,
    key             bytea,
    payload         bytea,                          -- NULL is a tombstone
    headers         jsonb       NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    first_error     text,
    last_error      text,
    sent_at         timestamptz,
    kafka_partition integer,
    kafka_offset    bigint,
    CONSTRAINT messages_topic_not_empty CHECK (topic <> ''),
    CONSTRAINT messages_headers_object CHECK (jsonb_typeof(headers) = 'object'),
    CONSTRAINT messages_status_valid CHECK (status IN ('pending', 'sent')),
    CONSTRAINT messages_sent_has_position CHECK (
        status = 'pending' OR (sent_at IS NOT NULL AND kafka_partition IS NOT NULL AND kafka_offset IS NOT NULL))
);

COMMENT ON TABLE messages IS
    'Transactional outbox: INSERT (topic, key, payload, headers) in the same transaction as the business change.';

-- Claiming walks pending rows in id order; the partial index keeps that cost
-- independent of how many sent rows are retained.
CREATE INDEX messages_pending_idx ON messages (id) WHERE status = 'pending';

-- The per-key order check asks "is there an earlier pending row of this
-- topic and key?"; this index answers it with one probe.
CREATE INDEX messages_pending_key_idx ON messages (topic, key, id)
    WHERE status = 'pending' AND key IS NOT NULL;

-- Retention deletes sent rows by age.
CREATE INDEX messages_sent_at_idx ON messages (sent_at) WHERE status = 'sent';

-- Rows that can never be delivered as they are, or that failed
-- max_attempts times. Operators requeue them (same id) or discard them.
CREATE TABLE stuck_messages (
    id           bigint      PRIMARY KEY,          -- the original outbox id
    topic        text        NOT NULL,
    key          bytea,
    payload      bytea,
    headers      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL,
    attempts     integer     NOT NULL,
    first_error  text,
    last_error   text        NOT NULL,
    error_kind   text        NOT NULL,             -- row_fatal | row_retriable
    escalated_at timestamptz NOT NULL DEFAULT now()
);

-- A stuck row holds back the later rows of its key (strict order); the
-- claim asks for it by topic and key.
CREATE INDEX stuck_messages_topic_key_idx ON stuck_messages (topic, key, id);

-- Audit trail of discarded stuck rows: who gave up on which message, when.
CREATE TABLE discarded_messages (
    id           bigint      PRIMARY KEY,
    topic        text        NOT NULL,
    key          bytea,
    payload      bytea,
    headers      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    attempts     integer     NOT NULL,
    last_error   text        NOT NULL,
    escalated_at timestamptz NOT NULL,
    discarded_at timestamptz NOT NULL DEFAULT now(),
    discarded_by text        NOT NULL,             -- database role and, if given, the operator's name
    reason       text
);

-- Pending rows that wait behind a stuck row of their key, and which one.
CREATE VIEW blocked_messages AS
SELECT m.id, m.topic, m.key, m.created_at, s.id AS blocked_by_stuck_id
FROM messages m
JOIN LATERAL (
    SELECT s.id FROM stuck_messages s
    WHERE s.topic = m.topic AND s.key = m.key AND s.id < m.id
    ORDER BY s.id LIMIT 1) s ON true
WHERE m.status = 'pending' AND m.key IS NOT NULL;

-- Wake-up. A relay that has nothing to do registers here; while the
-- registration is live, inserts into messages send one NOTIFY per statement.
-- While relays are busy, inserts pay for one function call in the trigger's
-- WHEN, not for pg_notify (notifying transactions serialise their commits).
-- While some relay is idle this holds the time, in epoch milliseconds of the
-- database clock, until which it wants a NOTIFY; otherwise 1. A sequence,
-- not a table: the trigger's WHEN reads it with one function call (no SPI,
-- no plpgsql, no snapshot) and setval is immediate, not transactional.
CREATE UNLOGGED SEQUENCE relay_idle_until;

-- +goose StatementBegin
CREATE FUNCTION notify_wakeup() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_wakeup', '');
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

-- The WHEN runs for every INSERT statement; the function only when a relay
-- is idle. 'relay_idle_until' is resolved to an OID here, so the trigger
-- does not depend on the inserting session's search_path.
CREATE TRIGGER messages_wakeup AFTER INSERT ON messages
    FOR EACH STATEMENT
    WHEN (pg_sequence_last_value('relay_idle_until') > (extract(epoch FROM statement_timestamp()) * 1000)::bigint)
    EXECUTE FUNCTION notify_wakeup();

-- +goose Down
DROP TRIGGER messages_wakeup ON messages;
DROP FUNCTION notify_wakeup();
DROP SEQUENCE relay_idle_until;
DROP VIEW blocked_messages;
DROP TABLE discarded_messages;
DROP TABLE stuck_messages;
DROP TABLE messages;
