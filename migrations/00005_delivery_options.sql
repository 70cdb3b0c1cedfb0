-- Per-row delivery options. Applications may set them in their INSERT; rows
-- that leave them NULL are delivered as before. Names are unqualified (see
-- 00001).
--
--   deliver_after  the row is not produced before then; like a row that
--                  waits for its retry, it holds back the later rows of
--                  its topic and key (per-key order is kept).
--   expires_at     a row not delivered by then is escalated to
--                  stuck_messages with error_kind 'expired' and never
--                  produced late.
--   partition      the Kafka partition, instead of the key's (murmur2).
--
-- There is no record-timestamp option: franz-go measures its delivery
-- timeout (kgo.RecordDeliveryTimeout) from Record.Timestamp, so a record
-- stamped with a time older than the produce timeout is failed as timed out
-- before it is sent. Records keep the time of the produce.
--
-- No constraint checks them: an application's INSERT must never fail
-- because of the relay. A bad value (a negative or missing partition, an
-- expires_at before deliver_after) is escalated by the relay, alone, with
-- its reason.

-- +goose Up

-- Nullable columns without a default change only the catalog: no rewrite,
-- no scan. The lock is still ACCESS EXCLUSIVE for an instant, and it waits
-- for the batches in flight: give up after a few seconds rather than queue
-- every application INSERT behind it (see 00002); the migration is then
-- simply run again.
SET LOCAL lock_timeout = '5s';

ALTER TABLE messages
    ADD COLUMN deliver_after timestamptz,
    ADD COLUMN expires_at    timestamptz,
    ADD COLUMN partition     integer;

-- Kept when a row is escalated, requeued or discarded, so nothing the
-- application wrote is lost.
ALTER TABLE stuck_messages
    ADD COLUMN deliver_after timestamptz,
    ADD COLUMN expires_at    timestamptz,
    ADD COLUMN partition     integer;

ALTER TABLE discarded_messages
    ADD COLUMN deliver_after timestamptz,
    ADD COLUMN expires_at    timestamptz,
    ADD COLUMN partition     integer;

-- +goose Down
SET LOCAL lock_timeout = '5s';
ALTER TABLE discarded_messages DROP COLUMN partition;
ALTER TABLE discarded_messages DROP COLUMN expires_at;
ALTER TABLE discarded_messages DROP COLUMN deliver_after;
ALTER TABLE stuck_messages DROP COLUMN partition;
ALTER TABLE stuck_messages DROP COLUMN expires_at;
ALTER TABLE stuck_messages DROP COLUMN deliver_after;
ALTER TABLE messages DROP COLUMN partition;
ALTER TABLE messages DROP COLUMN expires_at;
ALTER TABLE messages DROP COLUMN deliver_after;
