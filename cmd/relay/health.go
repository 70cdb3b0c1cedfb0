package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/relay"
)

// readyTimeout bounds one readiness check; an orchestrator's probe usually
// gives up after a few seconds, so ours must answer before that.
const readyTimeout = 2 * time.Second

// healthHandler serves the probes:
//
//   - /livez answers 200 as long as the process serves HTTP. It never
//     touches Postgres or Kafka: an outage of either must not get a healthy
//     relay restarted (it waits the outage out, rows stay pending).
//   - /readyz answers 200 when a Postgres connection and a Kafka broker both
//     answer within readyTimeout, every migration the binary embeds is
//     applied and the relay's last batches went through (delivery), and 503
//     with the reasons otherwise. A broker can answer a
//     ping while refusing every produce; delivery catches that.
//   - /metrics serves Prometheus metrics.
func healthHandler(pool *pgxpool.Pool, client *kgo.Client, delivery func() error, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		problems := readiness(ctx, readyChecks(pool, client, delivery))
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, strings.Join(problems, "\n"))
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// readyChecks are what /readyz checks and outbox_relay_ready reports.
func readyChecks(pool *pgxpool.Pool, client *kgo.Client, delivery func() error) []check {
	return []check{
		{"database", pool.Ping},
		{"migrations", func(ctx context.Context) error { return relay.CheckSchema(ctx, pool) }},
		{"kafka", client.Ping},
		{"delivery", func(context.Context) error { return delivery() }},
	}
}

type check struct {
	name string
	fn   func(context.Context) error
}

// readiness runs the checks at once, so the slowest bounds the answer, and
// returns "name: error" for each that failed.
func readiness(ctx context.Context, checks []check) []string {
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() { errs[i] = c.fn(ctx) })
	}
	wg.Wait()
	var problems []string
	for i, err := range errs {
		if err != nil {
			problems = append(problems, checks[i].name+": "+err.Error())
		}
	}
	return problems
}
