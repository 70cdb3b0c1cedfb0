package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/layout"
	"github.com/outboxrelay/relay/internal/wait"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/verify"
)

func runCommand() *command {
	return &command{
		name:    "run",
		summary: "deliver outbox rows to Kafka until stopped (the default command)",
		about: `Runs the relay: claims committed rows of the outbox table, produces them to
Kafka with acks=all and marks them sent. Pending migrations are applied first
unless RELAY_MIGRATE_ON_START=false. A database that cannot be reached at
start is waited for (retried with a growing pause up to 15s, logged as
database_unavailable); the relay is not ready until it connects. Unless RELAY_HTTP_ADDR is off, an HTTP
server answers /livez (the process is alive) and /readyz (Postgres and Kafka
are reachable).

SIGINT or SIGTERM stops it gracefully: it stops claiming, finishes or releases
the batch in flight within RELAY_SHUTDOWN_TIMEOUT and exits 0. A second signal
exits at once with status 1; the rows of the batch in flight stay pending and
are produced again later (a duplicate, never a loss).

With several schemas in RELAY_SCHEMA (tenant_a,tenant_b) it runs one relay per
schema side by side; one that cannot start is logged (outbox_unavailable),
alerted and retried while the others deliver, and /readyz has a line per
outbox (200 while one is ready).

Configuration is read from RELAY_* environment variables: see
'relay help config'.`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			return noArgs("run", func(ctx context.Context) error {
				cfg, err := loadConfig(env.getenv)
				if err != nil {
					return err
				}
				d := &daemon{cfg: cfg, getenv: env.getenv, logger: cfg.newLogger(env.stderr), brokers: cfg.KafkaBrokers, mode: "run", unknown: env.unknown}
				return d.run(ctx)
			})
		},
	}
}

// daemon is the relay process of "relay run" and "relay dev": migrations,
// pool, Kafka client, HTTP server and the relay itself, stopped in order.
type daemon struct {
	cfg Config
	// getenv is the environment cfg was read from; AWS_MSK_IAM reads its
	// credentials from it at each authentication.
	getenv  func(string) string
	logger  *slog.Logger
	brokers []string
	// kafkaOpts are extra client options (dev mode lets produce create
	// topics).
	kafkaOpts []kgo.Opt
	mode      string
	// started, if set, is called once the HTTP server listens and before
	// the relay starts, with the server's address ("" when it is off).
	started func(httpAddr string)
	// unknown are the RELAY_* variables set that the relay does not read.
	unknown []unknownVar
}

// httpShutdownTimeout bounds how long in-flight health checks may delay the
// exit.
const httpShutdownTimeout = 5 * time.Second

// run blocks until ctx ends (or something fails), then shuts down. Shutdown
// after ctx ends is not an error.
func (d *daemon) run(ctx context.Context) error {
	cfg, log := d.cfg, d.logger
	log.Info("relay_starting",
		"mode", d.mode,
		"version", versionString(),
		"database", redactedDatabase(cfg.DatabaseURL),
		"schema", strings.Join(cfg.Schemas, ","),
		"kafka_brokers", d.brokers,
		"kafka_tls", cfg.KafkaTLS,
		"kafka_sasl_mechanism", cfg.KafkaSASLMechanism,
		"http_addr", cfg.HTTPAddr,
		"batch_size", cfg.BatchSize,
		"in_flight_batches", cfg.InFlightBatches,
		"poll_interval", cfg.PollInterval.String(),
		"wakeup", cfg.Wakeup,
		"shutdown_timeout", cfg.ShutdownTimeout.String(),
		"migrate_on_start", cfg.MigrateOnStart,
		"verify_interval", cfg.VerifyInterval.String(),
	)
	for _, u := range d.unknown {
		log.Warn("unknown_variable", "variable", u.Name, "did_you_mean", u.Suggestion, "message", u.String())
	}
	stopLog := context.AfterFunc(ctx, func() {
		log.Info("relay_stopping", "shutdown_timeout", cfg.ShutdownTimeout.String())
	})
	defer stopLog()

	err := d.serve(ctx)
	if err != nil && ctx.Err() != nil {
		// Asked to stop while starting up (a migration or a connection
		// attempt was cut short): that is a shutdown, not a failure.
		log.Info("relay_stopped", "interrupted", err.Error())
		return nil
	}
	if err != nil {
		return err // main reports it
	}
	log.Info("relay_stopped")
	return nil
}

func (d *daemon) serve(ctx context.Context) error {
	cfg, log := d.cfg, d.logger
	// The instance's name, chosen here when not configured, also names
	// its Postgres sessions (application_name).
	d.cfg.Instance = cmp.Or(cfg.Instance, relay.RandomInstanceName())
	met := newMetrics()
	outboxes := make([]*outbox, len(cfg.Schemas))
	for i, schema := range cfg.Schemas {
		o, err := d.newOutbox(schema, met)
		if err != nil {
			return err
		}
		outboxes[i] = o
	}

	// The HTTP server starts first, so that /livez answers and /readyz
	// says what each outbox waits for while the database is unreachable.
	var srv *http.Server
	var ln net.Listener
	httpAddr := ""
	if cfg.HTTPAddr != "off" {
		// Listen before anything runs, so a taken port fails the start
		// rather than leaving a relay without health checks.
		var err error
		ln, err = net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			for _, o := range outboxes {
				o.pool.Close()
			}
			return fmt.Errorf("http server: %w", err)
		}
		httpAddr = ln.Addr().String()
		srv = &http.Server{
			Handler:           healthHandler(outboxReadiness(outboxes), met.handler()),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
	}
	if d.started != nil {
		d.started(httpAddr)
	}
	stopHTTP := func() {
		if srv != nil {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), httpShutdownTimeout)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	if srv != nil {
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("http server: %w", err)
			}
			return nil
		})
	}
	if err := d.start(gctx, g, outboxes, httpAddr, stopHTTP); err != nil {
		for _, o := range outboxes {
			o.pool.Close()
		}
		stopHTTP()
		if werr := g.Wait(); werr != nil {
			return werr // the HTTP server's failure cut the start short
		}
		return err
	}
	return g.Wait()
}

// start wires what the outboxes share (alerts, tracing, the console) and
// runs each outbox in g: its start (database, migrations), then its relay.
// The health endpoints stay up until every relay has stopped (stopHTTP), so
// an orchestrator sees a live process while it drains.
func (d *daemon) start(ctx context.Context, g *errgroup.Group, outboxes []*outbox, httpAddr string, stopHTTP func()) error {
	cfg, log := d.cfg, d.logger
	if _, err := kafkaSecurityOpts(cfg, d.getenv); err != nil {
		return err
	}
	logKafkaSecurityWarnings(log, cfg)
	alerts, startAlerts, err := alerting(cfg, log)
	if err != nil {
		return err
	}
	tp, traceEndpoint, stopTracing, err := tracing(ctx, d.getenv)
	if err != nil {
		return err
	}
	flushTracing := func() {}
	if tp != nil {
		log.Info("tracing_enabled", "otlp_endpoint", traceEndpoint)
		flushTracing = func() {
			// Flush the last batches' spans, within a bound.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), httpShutdownTimeout)
			defer cancel()
			if err := stopTracing(sctx); err != nil {
				log.Warn("tracing_flush_failed", "error", err)
			}
		}
	}
	stopConsole, err := d.startConsole(ctx, g, outboxes)
	if err != nil {
		flushTracing()
		return err
	}
	startAlerts(ctx, g)
	g.Go(func() error {
		defer func() {
			// Last: the console reads the pools until it stops.
			for _, o := range outboxes {
				o.pool.Close()
			}
		}()
		defer stopHTTP()
		defer stopConsole()
		defer flushTracing()
		og, octx := errgroup.WithContext(ctx)
		var tried sync.WaitGroup // each outbox's first start
		var running atomic.Int32
		for _, o := range outboxes {
			tried.Add(1)
			og.Go(func() error {
				return d.runOutbox(octx, o, alerts, tp, func(ok bool) {
					if ok {
						running.Add(1)
					}
					tried.Done()
				})
			})
		}
		if httpAddr != "" {
			og.Go(func() error {
				// Logged once the probes answer for running relays:
				// before, the server already listened, but only to say
				// they were starting.
				tried.Wait()
				if running.Load() > 0 && octx.Err() == nil {
					log.Info("http_listening", "addr", httpAddr)
				}
				return nil
			})
		}
		return og.Wait()
	})
	return nil
}

// runOutbox starts the outbox o and runs its relay until ctx ends. With one
// outbox, a start that fails for another reason than an unreachable
// database ends the process, as it always has. With several, one broken
// outbox (its schema missing or not migrated, its role without grants) must
// not stop the others: its failure is logged (outbox_unavailable), alerted,
// shown by /readyz and outbox_relay_ready, and the start is tried again
// with a growing pause, so that it delivers once fixed, without a restart.
//
// tried is called once, when the first start succeeded (ok) or failed.
func (d *daemon) runOutbox(ctx context.Context, o *outbox, alerts alert.Alerter, tp trace.TracerProvider, tried func(ok bool)) error {
	pause := time.Second
	for attempt := 1; ; attempt++ {
		run, err := d.openOutbox(ctx, o, alerts, tp)
		if attempt == 1 {
			tried(err == nil)
		}
		if err == nil {
			return run(ctx)
		}
		if ctx.Err() != nil || !d.cfg.multi() {
			return err
		}
		if _, ok := errors.AsType[*usageError](err); ok {
			return err // the configuration, which no retry mends
		}
		msg := redactSecret(err.Error(), d.cfg.DatabaseURL)
		o.setStarting(startFailure(err))
		o.log.Error("outbox_unavailable", "error", msg, "attempt", attempt, "retry_in", pause.String())
		o.alerter(alerts).Raise(ctx, alert.Alert{Kind: alert.KindOutboxUnavailable,
			Message: fmt.Sprintf("outbox %s cannot start, the others keep delivering; retried every %s at most: %s", o.schema, maxOutboxRetryPause, msg)})
		if err := wait.Sleep(ctx, pause); err != nil {
			return err
		}
		pause = min(2*pause, maxOutboxRetryPause)
	}
}

// maxOutboxRetryPause bounds the pause between two starts of an outbox
// that failed to start.
const maxOutboxRetryPause = time.Minute

// openOutbox waits for the database, migrates the outbox unless told not
// to, checks its schema (with several outboxes) and wires its Kafka client,
// relay and periodic verify. run then delivers until ctx ends and closes
// the client (start closes the pools once every outbox has returned).
func (d *daemon) openOutbox(ctx context.Context, o *outbox, alerts alert.Alerter, tp trace.TracerProvider) (run func(context.Context) error, err error) {
	cfg, log := o.cfg, o.log
	if err := d.waitForDatabase(ctx, o); err != nil {
		return nil, err
	}
	if d.cfg.multi() {
		// Fail here, where it is retried, rather than in every batch.
		if err := checkDatabase(ctx, o.pool); err != nil {
			return nil, err
		}
	}
	if err := installLayouts(ctx, o.pool, cfg, log); err != nil {
		return nil, err
	}
	compression, _ := cfg.compression()            // validated
	secOpts, _ := kafkaSecurityOpts(cfg, d.getenv) // checked by start
	opts := []kgo.Opt{
		compression,
		kgo.ClientID(cfg.ClientID),
		kgo.WithLogger(kslog.New(log.With("component", "kafka"))),
		kgo.WithHooks(o.met.kafka),
	}
	opts = append(opts, secOpts...)
	client, err := relay.NewKafkaClient(d.brokers, append(opts, d.kafkaOpts...)...)
	if err != nil {
		return nil, err
	}
	relayCfg := cfg.relayConfig()
	if tp != nil {
		relayCfg.TracerProvider = tp
	}
	relayCfg.Alerter = o.alerter(alerts)
	relayCfg.Metrics = o.met.relay
	r := relay.New(relayCfg, o.pool, client, log)
	var pv *verify.Periodic
	if cfg.VerifyInterval > 0 {
		pv = &verify.Periodic{
			Pool: o.pool, Client: client, Interval: cfg.VerifyInterval, ProduceTimeout: cfg.ProduceTimeout,
			Logger: log.With("component", "verify"), Alerter: relayCfg.Alerter, Metrics: o.met.verify,
		}
		o.pv.Store(pv)
	}
	ready := newReadiness(o.pool, client, r.KafkaHealthy, log.With("component", "health"))
	o.met.ready.Store(ready)
	o.setRunning(ready)
	return func(ctx context.Context) error {
		defer client.Close()
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error { return r.Run(gctx) })
		if pv != nil {
			g.Go(func() error { pv.Run(gctx); return nil })
		}
		return g.Wait()
	}, nil
}

// waitForDatabase connects to the database, and applies the pending
// migrations to o's schema unless RELAY_MIGRATE_ON_START=false, retrying
// with a growing pause for as long as the database cannot be reached: a
// relay started before its database waits for it, not ready, rather than
// exiting. Other failures (a refused password, a migration that fails) end
// the wait.
func (d *daemon) waitForDatabase(ctx context.Context, o *outbox) error {
	cfg, log := o.cfg, o.log
	begun := time.Now()
	pause := time.Second / 2
	for attempt := 1; ; attempt++ {
		var err error
		if cfg.MigrateOnStart {
			err = migrateUp(ctx, o.poolCfg, o.schema, log)
		} else {
			err = pingDatabase(ctx, o.poolCfg)
		}
		if err == nil {
			if attempt > 1 {
				log.Info("database_available", "waited", time.Since(begun).Round(time.Millisecond).String(), "attempts", attempt)
			}
			return nil
		}
		if ctx.Err() != nil || !databaseUnreachable(err) {
			return err
		}
		msg := redactSecret(err.Error(), cfg.DatabaseURL)
		o.setStarting("waiting for the database: " + msg)
		log.Warn("database_unavailable", "error", msg, "attempt", attempt, "retry_in", pause.String(),
			"database", redactedDatabase(cfg.DatabaseURL))
		if err := wait.Sleep(ctx, pause); err != nil {
			return err
		}
		pause = min(2*pause, maxDatabaseRetryPause)
	}
}

// maxDatabaseRetryPause bounds the pause between two connection attempts at
// start.
const maxDatabaseRetryPause = 15 * time.Second

// pingDatabase opens one connection and closes it.
func pingDatabase(ctx context.Context, poolCfg *pgxpool.Config) error {
	conn, err := pgx.ConnectConfig(ctx, poolCfg.ConnConfig.Copy())
	if err != nil {
		return fmt.Errorf("connect to the database: %w", err)
	}
	return conn.Close(ctx)
}

// databaseUnreachable reports whether err is a failure to reach the
// database (refused, timed out, reset), which waiting can cure, rather than
// one the database answered: a rejected password, a database that does not
// exist.
func databaseUnreachable(err error) bool {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		// The server answered. Class 57 (shutting down, starting up,
		// too many connections) passes with time; the rest does not.
		return strings.HasPrefix(pgErr.Code, "57") || pgErr.Code == "53300"
	}
	if _, ok := errors.AsType[*pgconn.ConnectError](err); ok {
		return true
	}
	_, ok := errors.AsType[net.Error](err)
	return ok
}

// migrateUp applies pending migrations to schema.
func migrateUp(ctx context.Context, poolCfg *pgxpool.Config, schema string, log *slog.Logger) error {
	m, err := relay.NewMigrator(ctx, poolCfg, schema)
	if err != nil {
		return err
	}
	defer m.Close()
	n, err := m.Up(ctx)
	if err != nil {
		return err
	}
	log.Info("migrations_applied", "schema", schema, "count", n)
	return nil
}

// installLayouts installs the copy trigger of each table the configuration
// maps (RELAY_DEBEZIUM_TABLE, RELAY_LAYOUT_TABLE). A mapping that does not
// fit its table is a usage error: exit 2, naming the variable and column.
func installLayouts(ctx context.Context, pool *pgxpool.Pool, cfg Config, log *slog.Logger) error {
	mappings, err := cfg.mappings()
	if err != nil || len(mappings) == 0 {
		return err // validated at load
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("install the copy triggers: %w", err)
	}
	defer conn.Release()
	installed, err := layout.Install(ctx, conn.Conn(), cfg.schema(), mappings)
	if lerr, ok := errors.AsType[*layout.Error](err); ok {
		return &usageError{lerr}
	}
	if err != nil {
		return err
	}
	for _, in := range installed {
		log.Info("copy_trigger_ready", "table", in.Table.String(), "trigger", in.Trigger, "function", in.Function, "installed_now", in.Changed)
	}
	return nil
}
