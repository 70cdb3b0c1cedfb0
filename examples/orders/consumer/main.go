// Command consumer is the example's consumer of order events: it keeps a
// table of each order's status, drops duplicate records by their dedup id
// and commits offsets only after it processed the records. Run it against
// `relay dev`; README.md in the directory above says how.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/examples/orders"
)

func main() {
	// The first signal stops the consumer after the record in hand and
	// commits what it processed.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("consumer", flag.ContinueOnError)
	dbURL := fs.String("database-url", envOr("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"), "Postgres of the consumer's own tables (DATABASE_URL)")
	brokers := fs.String("brokers", envOr("KAFKA_BROKERS", "127.0.0.1:9092"), "Kafka seed brokers, comma-separated (KAFKA_BROKERS)")
	group := fs.String("group", "orders-example", "consumer group")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	pool, err := pgxpool.New(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	client, err := kgo.NewClient(append(orders.ConsumerClientOpts(*group), kgo.SeedBrokers(strings.Split(*brokers, ",")...))...)
	if err != nil {
		return err
	}
	defer client.Close() // leaves the group; offsets are committed already

	c := orders.NewConsumer(client, pool, log)
	if err := c.CreateTables(ctx); err != nil {
		return err
	}
	log.Info("consuming", "topic", orders.Topic, "group", *group, "brokers", *brokers)
	return c.Run(ctx)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
