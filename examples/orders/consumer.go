package orders

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The headers the relay puts on every record. outbox-uuid is unique across
// database incarnations (a failover or a restore can issue an outbox-id
// again for a different event); outbox-id is the row's id, for relays that
// do not send outbox-uuid yet.
const (
	headerOutboxUUID = "outbox-uuid"
	headerOutboxID   = "outbox-id"
)

// DedupID is the id a consumer drops duplicates by: "uuid:" and the
// record's outbox-uuid header when it has one, else "id:" and its outbox-id.
// It is false for a record that has neither (not produced by the relay).
func DedupID(r *kgo.Record) (string, bool) {
	var id string
	for _, h := range r.Headers {
		switch h.Key {
		case headerOutboxUUID:
			return "uuid:" + string(h.Value), true
		case headerOutboxID:
			id = "id:" + string(h.Value)
		}
	}
	return id, id != ""
}

// Consumer reads order events and keeps a table of each order's status.
// The relay delivers at least once, so a record can arrive twice: the
// consumer records each dedup id in the same transaction as the change the
// record makes, and a record whose id is already there changes nothing.
//
// Offsets: auto-commit is off. The consumer commits the offsets of the
// records it processed, synchronously, after each polled batch, before it
// lets a rebalance happen, and when it stops, for shutdown or an error.
// A record is never committed before its change is, so a crash at any point
// replays records (which dedup drops) but never skips one.
type Consumer struct {
	client *kgo.Client
	pool   *pgxpool.Pool
	log    *slog.Logger

	// apply makes a record's change inside tx; tests replace it.
	apply func(ctx context.Context, tx pgx.Tx, e Event) error
}

// ConsumerClientOpts are the Kafka client options the consumer needs, for
// group in addition to the caller's seed brokers.
func ConsumerClientOpts(group string) []kgo.Opt {
	return []kgo.Opt{
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(Topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		// No rebalance between a poll and the commit of its records:
		// partitions cannot move to another member while this one
		// still holds uncommitted work on them.
		kgo.BlockRebalanceOnPoll(),
	}
}

// NewConsumer returns a consumer that reads with client (built with
// ConsumerClientOpts) and keeps its state in the pool's search_path.
func NewConsumer(client *kgo.Client, pool *pgxpool.Pool, log *slog.Logger) *Consumer {
	return &Consumer{client: client, pool: pool, log: log, apply: applyEvent}
}

// CreateTables creates the consumer's tables: the dedup ids it processed
// and the orders as it sees them.
func (c *Consumer) CreateTables(ctx context.Context) error {
	_, err := c.pool.Exec(ctx, `
		CREATE TABLE IF NOT EXISTS processed_events (
			dedup_id     text PRIMARY KEY,
			topic        text NOT NULL,
			kafka_partition int NOT NULL,
			kafka_offset bigint NOT NULL,
			processed_at timestamptz NOT NULL DEFAULT now()
		);
		CREATE TABLE IF NOT EXISTS order_view (
			order_id    bigint PRIMARY KEY,
			status      text NOT NULL,
			total_cents bigint NOT NULL,
			events      int NOT NULL
		)`)
	if err != nil {
		return fmt.Errorf("create consumer tables: %w", err)
	}
	return nil
}

// applyEvent is the consumer's business logic: the order's latest status.
// events counts the changes applied, so a duplicate that got through would
// show.
func applyEvent(ctx context.Context, tx pgx.Tx, e Event) error {
	_, err := tx.Exec(ctx, `INSERT INTO order_view (order_id, status, total_cents, events) VALUES ($1, $2, $3, 1)
		ON CONFLICT (order_id) DO UPDATE SET status = excluded.status, total_cents = excluded.total_cents, events = order_view.events + 1`,
		e.OrderID, e.Status, e.TotalCents)
	return err
}

// commitTimeout bounds the commit made while stopping.
const commitTimeout = 10 * time.Second

// Run consumes until ctx ends (it returns nil then) or processing fails (it
// returns the error). Either way it first commits what it processed.
func (c *Consumer) Run(ctx context.Context) error {
	for {
		fetches := c.client.PollRecords(ctx, 500)
		if ctx.Err() != nil || fetches.IsClientClosed() {
			// Records a poll returned as ctx ended are not processed
			// and not committed: the next member reads them again.
			c.client.AllowRebalance()
			return nil
		}
		// Fetch errors are the client's to retry; they are logged here.
		fetches.EachError(func(topic string, partition int32, err error) {
			c.log.Warn("fetch_failed", "topic", topic, "partition", partition, "error", err)
		})
		done, err := c.processBatch(ctx, fetches.Records())
		// Commit what was processed, synchronously, whatever happened.
		// Detached from ctx: a shutdown must still commit its work.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
		cerr := c.commit(cctx, done)
		cancel()
		c.client.AllowRebalance()
		if err != nil {
			return errors.Join(err, cerr)
		}
		if cerr != nil {
			// The records are processed; after a restart they come
			// again and dedup drops them.
			return cerr
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// processBatch processes records in order until one fails or ctx ends, and
// returns those it processed.
func (c *Consumer) processBatch(ctx context.Context, records []*kgo.Record) (done []*kgo.Record, err error) {
	for _, r := range records {
		if ctx.Err() != nil {
			return done, nil // stop between records; the rest comes again
		}
		if err := c.process(context.WithoutCancel(ctx), r); err != nil {
			return done, fmt.Errorf("record %s/%d@%d: %w", r.Topic, r.Partition, r.Offset, err)
		}
		done = append(done, r)
	}
	return done, nil
}

// process makes one record's change, once: the dedup id and the change
// commit together or not at all.
func (c *Consumer) process(ctx context.Context, r *kgo.Record) error {
	id, ok := DedupID(r)
	if !ok {
		c.log.Warn("record_without_dedup_id", "topic", r.Topic, "partition", r.Partition, "offset", r.Offset)
		return nil // not an event of the relay: nothing to do
	}
	var e Event
	if err := json.Unmarshal(r.Value, &e); err != nil {
		// A payload that can never be processed is logged and
		// skipped, not retried forever; a real consumer would park it
		// in a dead-letter table.
		c.log.Error("bad_event", "dedup_id", id, "error", err)
		return nil
	}
	return pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO processed_events (dedup_id, topic, kafka_partition, kafka_offset)
			VALUES ($1, $2, $3, $4) ON CONFLICT (dedup_id) DO NOTHING`, id, r.Topic, r.Partition, r.Offset)
		if err != nil {
			return fmt.Errorf("record dedup id: %w", err)
		}
		if tag.RowsAffected() == 0 {
			c.log.Info("duplicate_dropped", "dedup_id", id, "order_id", e.OrderID, "partition", r.Partition, "offset", r.Offset)
			return nil
		}
		if err := c.apply(ctx, tx, e); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		c.log.Info("event_processed", "dedup_id", id, "order_id", e.OrderID, "status", e.Status)
		return nil
	})
}

// commit commits the offsets after records, synchronously.
func (c *Consumer) commit(ctx context.Context, records []*kgo.Record) error {
	if len(records) == 0 {
		return nil
	}
	if err := c.client.CommitRecords(ctx, records...); err != nil {
		return fmt.Errorf("commit offsets: %w", err)
	}
	return nil
}
