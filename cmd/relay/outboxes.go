package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/console"
	"github.com/outboxrelay/relay/internal/pgstore"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/verify"
)

// validateSchemas checks RELAY_SCHEMA: every schema of the list valid, none
// twice, and no copy trigger (RELAY_DEBEZIUM_TABLE, RELAY_LAYOUT_TABLE) when
// there are several, since a trigger copies into one outbox only.
func (c Config) validateSchemas(add func(name, format string, args ...any)) {
	if len(c.Schemas) == 0 {
		add("RELAY_SCHEMA", "no schema given")
		return
	}
	seen := map[string]bool{}
	for _, s := range c.Schemas {
		if err := relay.ValidSchema(s); err != nil {
			add("RELAY_SCHEMA", "%v", err)
			return
		}
		if seen[s] {
			add("RELAY_SCHEMA", "%s is listed twice: each outbox once", s)
			return
		}
		seen[s] = true
	}
	if len(c.Schemas) == 1 {
		return
	}
	for _, v := range []struct{ name, value string }{{"RELAY_DEBEZIUM_TABLE", c.DebeziumTable}, {"RELAY_LAYOUT_TABLE", c.LayoutTable}} {
		if v.value != "" {
			add("RELAY_SCHEMA", "lists %d outboxes, but %s copies its inserts into one outbox: run a relay with one schema for it",
				len(c.Schemas), v.name)
			return
		}
	}
}

// outboxFlag declares --outbox on fs, for the commands that act on one
// outbox.
func outboxFlag(fs *flag.FlagSet) *string {
	return fs.String("outbox", "", "the outbox (a `schema` of RELAY_SCHEMA) to act on; needed when RELAY_SCHEMA lists several")
}

// outboxConfig loads the configuration of a one-shot command that acts on
// one outbox: the only one RELAY_SCHEMA lists, or the one outbox names.
// Naming none of several, or one RELAY_SCHEMA does not list, is a usage
// error that lists the choices.
func (e *environment) outboxConfig(outbox string) (Config, error) {
	cfg, err := e.config()
	if err != nil {
		return cfg, err
	}
	return cfg.forOutbox(outbox)
}

// forOutbox narrows the configuration to one outbox: the one outbox names,
// or, when outbox is empty, the only one there is.
func (c Config) forOutbox(outbox string) (Config, error) {
	choices := strings.Join(c.Schemas, ", ")
	switch {
	case outbox == "" && len(c.Schemas) == 1:
	case outbox == "":
		return c, usageErrorf("RELAY_SCHEMA lists %d outboxes (%s): choose one with --outbox", len(c.Schemas), choices)
	case !slices.Contains(c.Schemas, outbox):
		return c, usageErrorf("--outbox %s: not an outbox of RELAY_SCHEMA (%s)", outbox, choices)
	default:
		c.Schemas = []string{outbox}
	}
	return c, nil
}

// schema is the outbox of a configuration narrowed to one (forOutbox, or
// RELAY_SCHEMA naming one).
func (c Config) schema() string { return c.Schemas[0] }

// multi reports whether the configuration lists several outboxes.
func (c Config) multi() bool { return len(c.Schemas) > 1 }

// outbox is one outbox the daemon serves: its schema, its configuration
// narrowed to it, a logger and metrics labelled with it, its pool, and what
// /readyz says of it. Each outbox gets its own relay and Kafka client (see
// docs/architecture.md, "Several outboxes in one process").
type outbox struct {
	schema string
	// label is the schema when the process serves several outboxes, and
	// empty when it serves one: the outbox label of its metrics, log lines
	// and alerts.
	label   string
	cfg     Config
	log     *slog.Logger
	met     *outboxMetrics
	poolCfg *pgxpool.Config
	// pool is created at once but connects only when used, so the console
	// can show an outbox that is still starting.
	pool *pgxpool.Pool
	// state is what /readyz says: why it is starting, or its checks.
	state atomic.Pointer[outboxState]
	// pv is its periodic verify, once it runs (RELAY_VERIFY_INTERVAL).
	pv atomic.Pointer[verify.Periodic]
}

// outboxState is an outbox starting (starting says why it is not running
// yet) or running (ready holds its checks).
type outboxState struct {
	starting string
	ready    *readiness
}

// newOutbox prepares the outbox in schema: pool configuration and a lazy
// pool, logger and metrics.
func (d *daemon) newOutbox(schema string, met *metrics) (*outbox, error) {
	cfg, err := d.cfg.forOutbox(schema)
	if err != nil {
		return nil, err
	}
	poolCfg, err := relay.PoolConfig(cfg.DatabaseURL, schema)
	if err != nil {
		return nil, err
	}
	relay.BoundSockets(poolCfg, cfg.relayConfig())
	pgstore.NameSessions(poolCfg, cfg.Instance)
	// Each batch in flight holds a connection; the lag watch, retention
	// and health checks need a few more.
	poolCfg.MaxConns = max(poolCfg.MaxConns, int32(cfg.InFlightBatches)+3)
	pool, err := pgxpool.NewWithConfig(context.Background(), poolCfg)
	if err != nil {
		return nil, fmt.Errorf("database pool: %w", err)
	}
	// With one outbox, logs, metrics and alerts stay as they always were;
	// with several, each names its outbox.
	o := &outbox{schema: schema, cfg: cfg, log: d.logger, poolCfg: poolCfg, pool: pool}
	if d.cfg.multi() {
		o.label = schema
		o.log = o.log.With("outbox", schema)
	}
	o.met = met.forOutbox(o.label)
	o.met.watchPool(pool)
	o.setStarting("connecting to the database")
	return o, nil
}

func (o *outbox) setStarting(reason string) { o.state.Store(&outboxState{starting: reason}) }

func (o *outbox) setRunning(ready *readiness) { o.state.Store(&outboxState{ready: ready}) }

// alerter is the alert sink of o's relay: the process's pipeline, with
// each alert naming o (when there are several), and o's count of alerts by
// kind.
func (o *outbox) alerter(pipeline alert.Alerter) alert.Alerter {
	return alert.Fanout{
		alert.Func(func(ctx context.Context, a alert.Alert) {
			a.Outbox = o.label
			pipeline.Raise(ctx, a)
		}),
		o.met.countAlerts(),
	}
}

// lastVerify is the console's view of o's periodic verify.
func (o *outbox) lastVerify() (console.VerifyResult, bool) {
	if pv := o.pv.Load(); pv != nil {
		r, ok := pv.Last()
		return console.VerifyResult(r), ok
	}
	return console.VerifyResult{}, false
}

// startFailure is what /readyz says of an outbox that failed to start: a
// few fixed words, as for the checks; the error goes to the log.
func startFailure(err error) string {
	if _, ok := errors.AsType[schemaError](err); ok {
		return "migrations: the schema is not migrated or not readable"
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "42501" {
		return "the database role lacks privileges on the schema"
	}
	return "cannot start (see outbox_unavailable in the log)"
}

// outboxReadiness answers /readyz for the outboxes. With one, it answers
// as it always has: 200 "ok", or 503 and what is wrong. With several, the
// body has a line per outbox ("tenant_a: ok", "tenant_b: starting: …") and
// the status is 200 while at least one outbox is ready: one broken tenant
// must not take the others' relay out of service (nor stall a rolling
// update); outbox_relay_ready{outbox="tenant_b"} and the alert name it.
func outboxReadiness(outboxes []*outbox) http.Handler {
	if len(outboxes) == 1 {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { outboxes[0].serveReady(w, r) })
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lines := make([]string, len(outboxes))
		ok := make([]bool, len(outboxes))
		var wg sync.WaitGroup
		for i, o := range outboxes {
			wg.Go(func() { lines[i], ok[i] = o.readyLine(r.Context()) })
		}
		wg.Wait()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !slices.Contains(ok, true) {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		for i, o := range outboxes {
			fmt.Fprintf(w, "%s: %s\n", o.schema, lines[i])
		}
	})
}

// serveReady is /readyz of a process with one outbox.
func (o *outbox) serveReady(w http.ResponseWriter, r *http.Request) {
	st := o.state.Load()
	if st.ready != nil {
		st.ready.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintln(w, "starting: "+st.starting)
}

// readyLine is o's line of a multi-outbox /readyz, and whether o is ready.
func (o *outbox) readyLine(ctx context.Context) (string, bool) {
	st := o.state.Load()
	if st.ready == nil {
		return "starting: " + st.starting, false
	}
	problems, ok := st.ready.answer(ctx)
	if !ok {
		return "readiness check timed out", false
	}
	if len(problems) == 0 {
		return "ok", true
	}
	parts := make([]string, len(problems))
	for i, p := range problems {
		parts[i] = p.public()
	}
	return strings.Join(parts, "; "), false
}
