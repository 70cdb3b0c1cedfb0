-- Keys and topics are application data of any length, and a btree entry
-- over 2,704 bytes makes the INSERT fail: with the (topic, key, id) btree
-- indexes of 00001, a key of about 2.7 KB could not be written at all. Hash
-- indexes keep a 4-byte hash code per row whatever the key's size, and the
-- equality is checked again on the row, so they answer the same lookups
-- ("the pending rows of this key", "the stuck rows of this key": key = $k,
-- the topic then filtered) with no limit on the key or the topic.
--
-- The index builds take a SHARE lock on their table: inserts wait for the
-- build (they do not fail). On a large outbox, run this migration at a
-- quiet time, or create the two new indexes beforehand with CREATE INDEX
-- CONCURRENTLY under the same names.

-- +goose Up
CREATE INDEX IF NOT EXISTS messages_pending_key_hash_idx ON messages USING hash (key)
    WHERE status = 'pending' AND key IS NOT NULL;
DROP INDEX messages_pending_key_idx;

CREATE INDEX IF NOT EXISTS stuck_messages_key_hash_idx ON stuck_messages USING hash (key);
DROP INDEX stuck_messages_topic_key_idx;

-- +goose Down
CREATE INDEX stuck_messages_topic_key_idx ON stuck_messages (topic, key, id);
DROP INDEX stuck_messages_key_hash_idx;

CREATE INDEX messages_pending_key_idx ON messages (topic, key, id)
    WHERE status = 'pending' AND key IS NOT NULL;
DROP INDEX messages_pending_key_hash_idx;
