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
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"
	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/relay"
)

func runCommand() *command {
	return &command{
		name:    "run",
		summary: "deliver outbox rows to Kafka until stopped (the default command)",
		about: `Runs the relay: claims committed rows of the outbox table, produces them to
Kafka with acks=all and marks them sent. Pending migrations are applied first
unless RELAY_MIGRATE_ON_START=false. Unless RELAY_HTTP_ADDR is off, an HTTP
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
				d := &daemon{cfg: cfg, getenv: env.getenv, logger: cfg.newLogger(env.stderr), brokers: cfg.KafkaBrokers, mode: "run"}
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
	instance := cmp.Or(cfg.Instance, relay.RandomInstanceName())
	relay.NameSessions(poolCfg, instance)
	if cfg.MigrateOnStart {
		if err := migrateUp(ctx, poolCfg, cfg.Schema, log); err != nil {
			return err
		}
	}
	// Each batch in flight holds a connection; the lag watch, retention
	// and health checks need a few more.
	poolCfg.MaxConns = max(poolCfg.MaxConns, int32(cfg.InFlightBatches)+3)
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("database pool: %w", err)
	}
	defer pool.Close()

	met := newMetrics()
	met.watchPool(pool)
	opts := []kgo.Opt{
		kgo.ClientID(cfg.ClientID),
		kgo.RecordDeliveryTimeout(cfg.ProduceTimeout),
		kgo.WithLogger(kslog.New(log.With("component", "kafka"))),
		kgo.WithHooks(met.kafka),
	}
	secOpts, err := kafkaSecurityOpts(cfg, d.getenv)
	if err != nil {
		return err
	}
	opts = append(opts, secOpts...)
	logKafkaSecurityWarnings(log, cfg)
	client, err := relay.NewKafkaClient(d.brokers, append(opts, d.kafkaOpts...)...)
	if err != nil {
		return err
	}
	defer client.Close()

	alerts, startAlerts, err := alerting(cfg, log)
	if err != nil {
		return err
	}
	relayCfg := cfg.relayConfig()
	relayCfg.Instance = instance
	relayCfg.Alerter = alert.Fanout{alerts, met.countAlerts()}
	relayCfg.Metrics = met.relay
	r := relay.New(relayCfg, pool, client, log)

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
			Handler:           healthHandler(pool, client, r.KafkaHealthy, met.handler()),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
		log.Info("http_listening", "addr", httpAddr)
	}
	if d.started != nil {
		d.started(httpAddr)
	}

	g, gctx := errgroup.WithContext(ctx)
	startAlerts(gctx, g)
	g.Go(func() error {
		// The health endpoints stay up until the batch in flight is
		// done, so an orchestrator sees a live process while it drains.
		if srv != nil {
			defer func() {
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), httpShutdownTimeout)
				defer cancel()
				_ = srv.Shutdown(sctx)
			}()
		}
		return r.Run(gctx)
	})
	if cfg.VerifyInterval > 0 {
		pv := &periodicVerify{
			pool: pool, client: client, interval: cfg.VerifyInterval, margin: verifyMargin(cfg.ProduceTimeout),
			log: log.With("component", "verify"), alerter: relayCfg.Alerter, met: met.verify,
		}
		g.Go(func() error {
			pv.run(gctx)
			return nil
		})
	}
	if srv != nil {
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("http server: %w", err)
			}
			return nil
		})
	}
	return g.Wait()
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
