-- Two fixes of 00001: a dedup identity that survives failover, and a
-- wake-up channel name that fits every valid schema name.

-- +goose Up

-- ALTER TABLE waits for the batches in flight (they lock rows of messages),
-- and every application INSERT queues behind the waiting ALTER. Give up
-- after a few seconds rather than stall the applications behind a batch
-- that waits for an unavailable Kafka; the migration is then simply run
-- again (nothing of it was applied).
SET LOCAL lock_timeout = '5s';

-- Dedup identity. The id is a sequence value: after an asynchronous failover
-- or a point-in-time restore the new primary can issue an id again for a
-- different event, so consumers dedup on this random UUID instead (the
-- record header outbox-uuid). It is kept when a row moves to stuck_messages,
-- is requeued, or is discarded.
--
-- ADD COLUMN with a volatile default (gen_random_uuid()) would rewrite the
-- whole table, history included, under an ACCESS EXCLUSIVE lock that stops
-- every application INSERT for the duration. Adding the column without a
-- default and setting the default afterwards changes only the catalog: rows
-- that already exist read NULL, rows inserted from now on get a UUID. The
-- NOT VALID check enforces NOT NULL for every row written from now on
-- without scanning the old ones. Only the pending rows (the backlog, small
-- in steady state) are given a UUID here, so every record produced from now
-- on carries one; sent rows written before this migration keep NULL (their
-- records, produced earlier, had no outbox-uuid header).
ALTER TABLE messages ADD COLUMN uuid uuid;
ALTER TABLE messages ALTER COLUMN uuid SET DEFAULT gen_random_uuid();
ALTER TABLE messages ADD CONSTRAINT messages_uuid_not_null CHECK (uuid IS NOT NULL) NOT VALID;
UPDATE messages SET uuid = gen_random_uuid() WHERE status = 'pending';

ALTER TABLE stuck_messages ADD COLUMN uuid uuid;
UPDATE stuck_messages SET uuid = gen_random_uuid();

-- NULL only for rows discarded before this migration.
ALTER TABLE discarded_messages ADD COLUMN uuid uuid;

-- Wake-up channel. Postgres refuses a NOTIFY channel name over 63 bytes,
-- and with it the INSERT that fired the trigger, so '<schema>_wakeup' broke
-- applications' inserts for schema names of 57 to 63 characters. A name
-- that does not fit is shortened to its first 47 characters, '_', the first
-- 8 hex digits of its SHA-256 and '_wakeup': 63 bytes, different for
-- different schemas in practice. relay.WakeupChannel computes the same name.
-- The expression is inlined: the trigger runs in the application's session,
-- whose search_path need not include this schema.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION notify_wakeup() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    IF octet_length(TG_TABLE_SCHEMA) <= 56 THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '_wakeup', '');
    ELSE
        PERFORM pg_notify(left(TG_TABLE_SCHEMA, 47) || '_'
            || left(encode(sha256(convert_to(TG_TABLE_SCHEMA, 'UTF8')), 'hex'), 8) || '_wakeup', '');
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION notify_wakeup() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_wakeup', '');
    RETURN NULL;
END;
$$;
-- +goose StatementEnd
ALTER TABLE discarded_messages DROP COLUMN uuid;
ALTER TABLE stuck_messages DROP COLUMN uuid;
ALTER TABLE messages DROP CONSTRAINT messages_uuid_not_null;
ALTER TABLE messages DROP COLUMN uuid;
