package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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

// readyFresh is how long a readiness answer is reused. Probes from several
// orchestrators, load balancers or a flood of requests then cost at most one
// check (one pool connection, one Kafka ping) per interval, and never more
// than one at a time: they cannot compete with the batches for the pool.
const readyFresh = time.Second

// healthHandler serves the probes:
//
//   - /livez answers 200 as long as the process serves HTTP. It never
//     touches Postgres or Kafka: an outage of either must not get a healthy
//     relay restarted (it waits the outage out, rows stay pending).
//   - /readyz answers 200 when a Postgres connection and a Kafka broker both
//     answer within readyTimeout, every migration the binary embeds is
//     applied and the relay's last batches went through (delivery), and 503
//     naming the checks that failed otherwise. A broker can answer a ping
//     while refusing every produce; delivery catches that. The body says
//     only which check failed, never the error itself (which can name
//     hosts, roles and tables): the details go to the log when the
//     answer changes.
//   - /metrics serves Prometheus metrics.
//
// With several outboxes, /readyz reports each (see outboxReadiness).
func healthHandler(ready http.Handler, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /readyz", ready)
	return mux
}

// newReadiness returns the checks of /readyz, shared with the
// outbox_relay_ready gauge so that scrapes reuse the probes' answer.
func newReadiness(pool *pgxpool.Pool, client *kgo.Client, delivery func() error, log *slog.Logger) *readiness {
	return &readiness{
		checks: []check{
			{"database", func(ctx context.Context) error { return checkDatabase(ctx, pool) }},
			{"kafka", client.Ping},
			{"delivery", func(context.Context) error { return delivery() }},
		},
		fresh: readyFresh,
		log:   log,
	}
}

// checkDatabase takes one pool connection and checks that every embedded
// migration is applied; that query also proves the database reachable.
func checkDatabase(ctx context.Context, pool *pgxpool.Pool) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	if err := relay.CheckSchema(ctx, conn); err != nil {
		return schemaError{err}
	}
	return nil
}

// schemaError is a database that answered, with a schema this relay cannot
// use (behind its migrations, or not readable by its role).
type schemaError struct{ error }

func (e schemaError) Unwrap() error { return e.error }

// public is what /readyz says of a failed check: which one, in a few fixed
// words; the error itself goes to the log.
func (p problem) public() string {
	switch p.check.name {
	case "database":
		if _, ok := errors.AsType[schemaError](p.err); ok {
			return "migrations: the schema is not migrated or not readable"
		}
		return "database: unreachable"
	case "kafka":
		return "kafka: no broker answers"
	default:
		return p.check.name + ": kafka is taking nothing"
	}
}

type check struct {
	name string
	fn   func(context.Context) error
}

// readiness runs the checks at most once at a time and reuses an answer for
// fresh: a probe that arrives while a check runs waits for its answer.
type readiness struct {
	checks []check
	fresh  time.Duration
	log    *slog.Logger

	mu      sync.Mutex
	running chan struct{} // closed when the check in progress ends; nil if none
	at      time.Time     // when last was found
	last    []problem     // nil: ready
	logged  string        // the answer last logged, to log changes only
}

type problem struct {
	check *check
	err   error
}

func (rd *readiness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	problems, ok := rd.answer(r.Context())
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "readiness check timed out")
		return
	}
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		for _, p := range problems {
			fmt.Fprintln(w, p.public())
		}
		return
	}
	fmt.Fprintln(w, "ok")
}

// answer returns the current problems, running the checks if the last
// answer is stale and no other request is running them. It returns false
// if ctx ended first.
func (rd *readiness) answer(ctx context.Context) ([]problem, bool) {
	rd.mu.Lock()
	if !rd.at.IsZero() && time.Since(rd.at) < rd.fresh {
		defer rd.mu.Unlock()
		return rd.last, true
	}
	if wait := rd.running; wait != nil {
		rd.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, false
		}
		rd.mu.Lock()
		defer rd.mu.Unlock()
		return rd.last, true
	}
	done := make(chan struct{})
	rd.running = done
	rd.mu.Unlock()

	// This request runs the checks for every request waiting on it, so
	// its own client going away must not cut them short.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), readyTimeout)
	problems := rd.run(cctx)
	cancel()

	rd.mu.Lock()
	rd.last, rd.at, rd.running = problems, time.Now(), nil
	rd.logChange(problems)
	rd.mu.Unlock()
	close(done)
	return problems, true
}

// run runs the checks at once, so the slowest bounds the answer.
func (rd *readiness) run(ctx context.Context) []problem {
	errs := make([]error, len(rd.checks))
	var wg sync.WaitGroup
	for i, c := range rd.checks {
		wg.Go(func() { errs[i] = c.fn(ctx) })
	}
	wg.Wait()
	var problems []problem
	for i, err := range errs {
		if err != nil {
			problems = append(problems, problem{&rd.checks[i], err})
		}
	}
	return problems
}

// logChange logs the problems, with their errors, when the answer differs
// from the last one logged (an error text such as "unavailable for 17s"
// changes every check, so only the answer counts); rd.mu is held.
func (rd *readiness) logChange(problems []problem) {
	var b strings.Builder
	for _, p := range problems {
		fmt.Fprintln(&b, p.public())
	}
	now := b.String()
	if now == rd.logged || rd.log == nil {
		return
	}
	rd.logged = now
	if len(problems) == 0 {
		rd.log.Info("ready")
		return
	}
	attrs := []any{}
	for _, p := range problems {
		attrs = append(attrs, p.check.name, p.err.Error())
	}
	rd.log.Warn("not_ready", attrs...)
}
