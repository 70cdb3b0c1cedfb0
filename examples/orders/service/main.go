// Command service is the example's order service: every -every it places an
// order and pays the one before, each change in one transaction with its
// outbox row. Run it against `relay dev`; README.md in the directory above
// says how.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/examples/orders"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("service", flag.ContinueOnError)
	dbURL := fs.String("database-url", envOr("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"), "Postgres of the service and the outbox (DATABASE_URL)")
	schema := fs.String("outbox-schema", envOr("RELAY_SCHEMA", "outbox"), "the relay's schema (RELAY_SCHEMA)")
	every := fs.Duration("every", time.Second, "how often to place an order")
	count := fs.Int("count", 0, "stop after this many orders (0: until interrupted)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	pool, err := pgxpool.New(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	svc := orders.NewService(pool, *schema)
	if err := svc.CreateTables(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(*every)
	defer tick.Stop()
	var last int64
	for n := 1; *count == 0 || n <= *count; n++ {
		id, err := svc.PlaceOrder(ctx, fmt.Sprintf("customer-%d", rand.IntN(100)), int64(100+rand.IntN(10000)))
		if ctx.Err() != nil {
			return nil // interrupted: the transaction rolled back, order and event alike
		}
		if err != nil {
			return err
		}
		log.Info("order placed", "order_id", id)
		if last != 0 {
			if err := svc.PayOrder(ctx, last); ctx.Err() != nil {
				return nil
			} else if err != nil {
				return err
			}
			log.Info("order paid", "order_id", last)
		}
		last = id
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
