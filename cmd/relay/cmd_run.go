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
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"
	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/layout"
	"github.com/outboxrelay/relay/relay"
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
		"schema", cfg.Schema,
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
	poolCfg, err := relay.PoolConfig(cfg.DatabaseURL, cfg.Schema)
	if err != nil {
		return err
	}
	relay.BoundSockets(poolCfg, cfg.relayConfig())
	// The instance's name, chosen here when not configured, also names
	// its Postgres sessions (application_name).
	d.cfg.Instance = cmp.Or(cfg.Instance, relay.RandomInstanceName())
	relay.NameSessions(poolCfg, d.cfg.Instance)
	met := newMetrics()

	// The HTTP server starts first, so that /livez answers and /readyz
	// says what the relay waits for while the database is unreachable.
	probes := &probeHandler{}
	probes.starting("connecting to the database", met.handler())
	var srv *http.Server
	var ln net.Listener
	httpAddr := ""
	if cfg.HTTPAddr != "off" {
		// Listen before anything runs, so a taken port fails the start
		// rather than leaving a relay without health checks.
		ln, err = net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return fmt.Errorf("http server: %w", err)
		}
		httpAddr = ln.Addr().String()
		srv = &http.Server{
			Handler:           probes,
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
	if err := d.start(gctx, g, poolCfg, met, probes, httpAddr, stopHTTP); err != nil {
		stopHTTP()
		if werr := g.Wait(); werr != nil {
			return werr // the HTTP server's failure cut the start short
		}
		return err
	}
	return g.Wait()
}

// start waits for the database, migrates it unless told not to, wires the
// relay and runs it in g. httpAddr is where the probes listen ("" when off). The health endpoints stay up until the relay has
// stopped (stopHTTP), so an orchestrator sees a live process while it
// drains.
func (d *daemon) start(ctx context.Context, g *errgroup.Group, poolCfg *pgxpool.Config, met *metrics, probes *probeHandler, httpAddr string, stopHTTP func()) error {
	cfg, log := d.cfg, d.logger
	if err := d.waitForDatabase(ctx, poolCfg, probes, met.handler()); err != nil {
		return err
	}
	// Each batch in flight holds a connection; the lag watch, retention
	// and health checks need a few more.
	poolCfg.MaxConns = max(poolCfg.MaxConns, int32(cfg.InFlightBatches)+3)
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("database pool: %w", err)
	}

	met.watchPool(pool)
	if err := installLayouts(ctx, pool, cfg, log); err != nil {
		pool.Close()
		return err
	}
	compression, _ := cfg.compression() // validated
	opts := []kgo.Opt{
		compression,
		kgo.ClientID(cfg.ClientID),
		kgo.RecordDeliveryTimeout(cfg.ProduceTimeout),
		kgo.WithLogger(kslog.New(log.With("component", "kafka"))),
		kgo.WithHooks(met.kafka),
	}
	secOpts, err := kafkaSecurityOpts(cfg, d.getenv)
	if err != nil {
		pool.Close()
		return err
	}
	opts = append(opts, secOpts...)
	logKafkaSecurityWarnings(log, cfg)
	client, err := relay.NewKafkaClient(d.brokers, append(opts, d.kafkaOpts...)...)
	if err != nil {
		pool.Close()
		return err
	}
	closeAll := func() {
		client.Close()
		pool.Close()
	}

	alerts, startAlerts, err := alerting(cfg, log)
	if err != nil {
		closeAll()
		return err
	}
	relayCfg := cfg.relayConfig()
	tp, traceEndpoint, stopTracing, err := tracing(ctx, d.getenv)
	if err != nil {
		closeAll()
		return err
	}
	if tp != nil {
		relayCfg.TracerProvider = tp
		log.Info("tracing_enabled", "otlp_endpoint", traceEndpoint)
		closeClients := closeAll
		closeAll = func() {
			// Flush the last batches' spans, within a bound.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), httpShutdownTimeout)
			defer cancel()
			if err := stopTracing(sctx); err != nil {
				log.Warn("tracing_flush_failed", "error", err)
			}
			closeClients()
		}
	}
	relayCfg.Alerter = alert.Fanout{alerts, met.countAlerts()}
	relayCfg.Metrics = met.relay
	r := relay.New(relayCfg, pool, client, log)
	var pv *periodicVerify
	if cfg.VerifyInterval > 0 {
		pv = &periodicVerify{
			pool: pool, client: client, interval: cfg.VerifyInterval, margin: verifyMargin(cfg.ProduceTimeout),
			log: log.With("component", "verify"), alerter: relayCfg.Alerter, met: met.verify,
		}
	}
	stopConsole, err := d.startConsole(ctx, g, pool, pv)
	if err != nil {
		closeAll()
		return err
	}
	ready := newReadiness(pool, client, r.KafkaHealthy, log.With("component", "health"))
	met.ready.Store(ready)
	probes.ready(healthHandler(ready, met.handler()))
	if httpAddr != "" {
		// Logged once the probes answer for the running relay: before,
		// the server already listened, but only to say it was starting.
		log.Info("http_listening", "addr", httpAddr)
	}

	// The pool and the client close once everything in g that uses them
	// has returned.
	var users sync.WaitGroup
	startAlerts(ctx, g)
	users.Add(1)
	g.Go(func() error {
		defer users.Done()
		defer stopHTTP()
		defer stopConsole()
		return r.Run(ctx)
	})
	if pv != nil {
		users.Add(1)
		g.Go(func() error {
			defer users.Done()
			pv.run(ctx)
			return nil
		})
	}
	g.Go(func() error {
		users.Wait()
		closeAll()
		return nil
	})
	return nil
}

// waitForDatabase connects to the database, and applies the pending
// migrations unless RELAY_MIGRATE_ON_START=false, retrying with a growing
// pause for as long as the database cannot be reached: a relay started
// before its database waits for it, not ready, rather than exiting. Other
// failures (a refused password, a migration that fails) end the start.
func (d *daemon) waitForDatabase(ctx context.Context, poolCfg *pgxpool.Config, probes *probeHandler, metrics http.Handler) error {
	cfg, log := d.cfg, d.logger
	begun := time.Now()
	pause := time.Second / 2
	for attempt := 1; ; attempt++ {
		var err error
		if cfg.MigrateOnStart {
			err = migrateUp(ctx, poolCfg, cfg.Schema, log)
		} else {
			err = pingDatabase(ctx, poolCfg)
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
		probes.starting("waiting for the database: "+msg, metrics)
		log.Warn("database_unavailable", "error", msg, "attempt", attempt, "retry_in", pause.String(),
			"database", redactedDatabase(cfg.DatabaseURL))
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
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
	installed, err := layout.Install(ctx, conn.Conn(), cfg.Schema, mappings)
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
