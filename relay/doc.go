// Package relay moves rows from a Postgres outbox table to Kafka.
//
// # Guarantees
//
//   - At-least-once: a row is marked sent only after Kafka acknowledged it
//     with acks=all; until then it stays pending and is produced again after
//     a crash. Every record carries the headers "outbox-id" (the row id)
//     and "outbox-uuid" (the row's random uuid); consumers drop the
//     duplicates this allows by outbox-uuid, which, unlike the id, a
//     failover or a point-in-time restore never issues again.
//   - Per-key order: for one topic and key, rows are first delivered in id
//     order. A row is claimed only when no earlier row of its topic and key is
//     pending, so it never overtakes an earlier row that is in flight on
//     another relay or waiting for a retry.
//   - No high-water mark: rows are claimed by state with FOR UPDATE SKIP
//     LOCKED, so a transaction that commits late is still delivered.
//
// # Life of a row
//
// An application inserts a row (status pending). A relay claims it in a
// transaction that locks it, produces it, and in the same transaction marks it
// sent with its partition and offset. If the produce fails, the row stays
// pending with attempts+1, last_error and a later next_attempt_at. A crash
// rolls the transaction back and releases the lock: the row is claimed again.
//
//	pending ──produce ok──▶ sent ──retention──▶ deleted
//	   │ ▲
//	   └─┘ produce failed: attempts+1, retry after backoff
package relay
