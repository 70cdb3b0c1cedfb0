package relay_test

import (
	"context"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/outboxrelay/relay/relay"
)

// A program that embeds the relay: one outbox, in schema outbox, delivered
// to local Kafka brokers until the program is stopped.
func ExampleNew() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	const schema = "outbox"
	// PoolConfig points the connections' search_path at the schema, which
	// the relay's SQL needs.
	poolCfg, err := relay.PoolConfig("postgres://app@localhost:5432/app", schema)
	if err != nil {
		log.Fatal(err)
	}
	m, err := relay.NewMigrator(ctx, poolCfg, schema)
	if err != nil {
		log.Fatal(err)
	}
	_, err = m.Up(ctx) // safe with several instances starting at once
	_ = m.Close()
	if err != nil {
		log.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	// NewKafkaClient pins what the relay relies on (acks=all,
	// idempotence, the Java client's partitioner).
	client, err := relay.NewKafkaClient([]string{"localhost:9092"})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	cfg := relay.Config{
		Schema:     schema,
		Durability: relay.DurabilityWarn,
		Metrics:    relay.NewMetrics(prometheus.DefaultRegisterer),
	}
	if err := cfg.Validate(); err != nil {
		log.Fatal(err)
	}
	r := relay.New(cfg, pool, client, slog.New(slog.NewJSONHandler(os.Stderr, nil)))
	// Run returns once ctx ends and the batches in flight are finished.
	if err := r.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
