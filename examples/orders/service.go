// Package orders is a runnable example of an application around the outbox
// relay: a service that changes its orders and writes the matching outbox
// row in the same transaction, and a consumer that reads the events the
// relay produced, drops the duplicates at-least-once delivery allows, and
// commits its Kafka offsets only after it processed the records.
//
// The two programs are in service/ and consumer/; README.md says how to run
// them against `relay dev`.
package orders

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Topic is where the order events go.
const Topic = "orders"

// Event is the payload of an order event.
type Event struct {
	OrderID    int64  `json:"order_id"`
	Status     string `json:"status"` // placed or paid
	TotalCents int64  `json:"total_cents"`
}

// Service places and pays orders. Each change and its event are one
// transaction: either both commit or neither does, so no event is lost and
// none is published for a change that rolled back. The relay does the rest.
type Service struct {
	pool *pgxpool.Pool
	// insertOutbox is the application's one statement for the outbox.
	insertOutbox string
}

// NewService returns a service that keeps its orders in the pool's
// search_path (public, by default) and writes its events to the relay's
// outbox in outboxSchema (the relay's RELAY_SCHEMA, "outbox" by default).
func NewService(pool *pgxpool.Pool, outboxSchema string) *Service {
	return &Service{
		pool: pool,
		insertOutbox: `INSERT INTO ` + pgx.Identifier{outboxSchema, "messages"}.Sanitize() + ` (topic, key, payload, headers)
			VALUES ($1, $2, $3, $4)`,
	}
}

// CreateTables creates the service's own table.
func (s *Service) CreateTables(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS orders (
		id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		customer    text NOT NULL,
		total_cents bigint NOT NULL,
		status      text NOT NULL DEFAULT 'placed',
		created_at  timestamptz NOT NULL DEFAULT now()
	)`)
	if err != nil {
		return fmt.Errorf("create orders table: %w", err)
	}
	return nil
}

// PlaceOrder inserts an order and its order_placed event.
func (s *Service) PlaceOrder(ctx context.Context, customer string, totalCents int64) (id int64, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO orders (customer, total_cents) VALUES ($1, $2) RETURNING id`,
			customer, totalCents).Scan(&id); err != nil {
			return fmt.Errorf("insert order: %w", err)
		}
		return s.publish(ctx, tx, "order_placed", Event{OrderID: id, Status: "placed", TotalCents: totalCents})
	})
	return id, err
}

// PayOrder marks an order paid and writes its order_paid event. The row
// lock of the UPDATE serialises the changes of one order, so its events
// enter the outbox in the order they happened and the relay delivers them
// in that order (the key is the order id).
func (s *Service) PayOrder(ctx context.Context, id int64) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var total int64
		err := tx.QueryRow(ctx, `UPDATE orders SET status = 'paid' WHERE id = $1 AND status = 'placed' RETURNING total_cents`, id).Scan(&total)
		if err != nil {
			return fmt.Errorf("pay order %d: %w", id, err)
		}
		return s.publish(ctx, tx, "order_paid", Event{OrderID: id, Status: "paid", TotalCents: total})
	})
}

// publish writes an event to the outbox inside the caller's transaction.
func (s *Service) publish(ctx context.Context, tx pgx.Tx, typ string, e Event) error {
	payload, err := json.Marshal(e)
	if err != nil {
		return err
	}
	headers := map[string]string{"type": typ}
	key := []byte(strconv.FormatInt(e.OrderID, 10))
	if _, err := tx.Exec(ctx, s.insertOutbox, Topic, key, payload, headers); err != nil {
		return fmt.Errorf("insert outbox row: %w", err)
	}
	return nil
}
