// Package bench measures the relay against a naive outbox loop on the same
// database and broker, in the same run.
//
// A run creates an outbox schema of its own (migrated with the relay's
// embedded migrations), then measures each variant — the naive baseline loop
// and the relay with one or more in-process instances — for several rounds,
// alternating their order, so that a noisy neighbour or a checkpoint hurts
// both alike. Each phase starts from an empty outbox and fresh topics, loads
// or streams rows, and ends when every row is acknowledged by Kafka and no
// row is pending in Postgres. Every figure is reported as the median over
// rounds, and the relay's as a ratio against the baseline's median.
//
// What is measured, precisely:
//
//   - rows/s: rows of the phase divided by the time from starting the
//     variant until the last row was acknowledged by Kafka and no row is
//     pending (its mark or delete committed). Pre-loaded rows are inserted
//     before that clock starts.
//   - commit→ack latency (streamed rows only): from the moment the writer's
//     COMMIT returned to the moment the producing client (relay or baseline)
//     received the broker's acknowledgement of the row's first delivery
//     (kgo.HookProduceRecordUnbuffered). Both are read from this process's
//     monotonic clock. The row is marked sent a little later, in the claim
//     transaction's commit.
//   - insert rate: rows the writers committed per second of streaming.
//   - CPU: user+system time of this whole process (getrusage) during the
//     phase: the relay instances plus the bench's writers and hooks; Kafka
//     runs in another process and Postgres is not included.
//   - RSS: peak resident set of this process during the phase (VmHWM after
//     resetting it through /proc/self/clear_refs).
//   - takeover (with KillOneAfter): one relay instance is killed mid-phase
//     as a crash would. Its share is the rows it had handed to its Kafka
//     client and not marked sent, which only the surviving instances can
//     deliver after the kill. The takeover runs from the kill to the moment
//     a survivor received Kafka's acknowledgement of the last row of that
//     share. The target: at most two poll intervals.
//
// After each phase a consumer reads the phase's topics from the start and
// checks that every row arrived, counts duplicates (those of a killed
// instance's share apart from the rest, which must be none), and checks
// per-key order (the first delivery of each row of a key in id order).
//
// With Config.ExternalSchema the bench measures relays it did not start
// (a deployed relay, a staging stack) and cannot hook: it inserts rows of
// its own into their outbox, for topics of its own, and watches delivery
// from outside (external.go). rows/s then runs until every row has been
// consumed by the bench and none is pending; latency is commit→consumed,
// which includes the consumer's fetch delay; CPU and RSS are not measured.
package bench

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/relay"
)

// Config describes one bench run. Zero values mean the documented default.
type Config struct {
	// DatabaseURL is the Postgres server to measure. Required.
	DatabaseURL string
	// Brokers are the Kafka seed brokers. Required.
	Brokers []string
	// BrokerPID returns the process id of the broker while it runs on
	// this machine, for its CPU figure; nil (or 0) when unknown.
	BrokerPID func() int
	// BrokerLatency is how long the bench's own broker delays each produce
	// response (the caller sets the broker up; the bench reports it).
	BrokerLatency time.Duration
	// Schema is the outbox schema the bench creates, and drops at the end
	// unless Keep is set. Default: bench_<random>.
	Schema string
	// Keep leaves the schema (with the last phase's rows) and the last
	// phase's topics in place.
	Keep bool
	// ExternalSchema is an existing, migrated outbox schema that relays
	// already running elsewhere deliver. The bench then starts no relay
	// and no baseline, and never creates, truncates or drops the schema:
	// it inserts rows of its own (real rows: use a staging outbox), for
	// topics of its own (bench-<random>-…, created and deleted by the
	// bench), and measures their delivery by consuming those topics.
	// Schema, Keep, Relays, Baseline, DeleteOnSend, Outage, VacuumInterval
	// and KillOneAfter must be left zero; the relay settings (BatchSize
	// to PollInterval) are the running relays' and are ignored.
	ExternalSchema string

	// Topics is how many topics rows are spread over. Default 1.
	Topics int
	// Partitions is the partition count of each topic. Default 12.
	Partitions int
	// PayloadSize is the size of each row's payload in bytes. Default 256.
	PayloadSize int
	// Keys is how many distinct keys rows cycle through. Default 10000;
	// negative means rows without a key.
	Keys int
	// Preload is how many rows are inserted before each phase's clock
	// starts.
	Preload int
	// Rate is how many rows per second the writers commit while the
	// variant runs; 0 streams nothing.
	Rate int
	// Duration is how long the writers stream. Default 10s.
	Duration time.Duration
	// Warmup leaves the rows streamed in the first Warmup out of the
	// latency figures. Default 1s.
	Warmup time.Duration
	// Writers is how many concurrent application transactions stream
	// rows. Default 4.
	Writers int
	// RowsPerTx is how many rows each streamed transaction inserts.
	// Default 1.
	RowsPerTx int
	// InsertStorm makes the writers commit as fast as they can for
	// Duration instead of at Rate, and measures the relay variants
	// against a reference relay with the wake-up off and the wake-up
	// trigger disabled (in place of the naive loop): the insert rate an
	// application reaches next to the relay, against the rate it reaches
	// when the relay adds nothing to its inserts.
	InsertStorm bool

	// Relays lists the relay variants by instance count: {1, 2} measures
	// one relay and two relays sharing the database. Default {1}.
	Relays []int
	// Baseline adds the naive loop as a variant; ratios need it.
	Baseline bool
	// Rounds is how many times each variant is measured. Default 3.
	Rounds int

	// DeleteOnSend deletes rows once acknowledged (relay retention 0);
	// the baseline then deletes too.
	DeleteOnSend bool
	// BatchSize is the claim size of the relay and the baseline. Default
	// 1000.
	BatchSize int
	// InFlightBatches is relay.Config.InFlightBatches: how many claimed
	// batches may await Kafka at once. 0: the relay's default.
	InFlightBatches int
	// PoolSize is the MaxConns of each relay instance's pool. 0: pgxpool's
	// default.
	PoolSize int
	// ClaimLinger is relay.Config.ClaimLinger. 0: none (the default).
	ClaimLinger time.Duration
	// DisableWakeup turns the relay's wake-up off.
	DisableWakeup bool
	// PollInterval is the relay's poll interval, and how long the
	// baseline sleeps after an empty claim. Default 500ms.
	PollInterval time.Duration
	// Outage, when positive, makes Kafka unreachable for this long at the
	// start of each phase (KafkaDown, then KafkaUp): the variant faces
	// its whole backlog with no broker, and then drains it. The phase's
	// peak RSS covers the outage. Topics are re-created on first use
	// after the broker returns (an in-memory broker forgets them).
	Outage time.Duration
	// KafkaDown and KafkaUp stop and restart the broker, for Outage.
	KafkaDown, KafkaUp func(context.Context) error
	// VacuumInterval, when positive, runs VACUUM on the outbox table this
	// often while a phase runs, standing in for autovacuum on servers
	// where it is off or too slow to matter within a phase.
	VacuumInterval time.Duration
	// KillOneAfter, when positive, kills one instance of every relay
	// variant (each must have at least two, and at most 64) this long into
	// each phase: the first one with records in flight to Kafka from then
	// on (a standby has none), as a crash would: its Postgres connections close and its backends
	// are terminated, so its open transactions roll back; its Run
	// context is cancelled and its Kafka client closed. The phase then
	// reports the takeover (Phase.Kill). The baseline is never killed.
	KillOneAfter time.Duration
	// SkipCheck skips consuming the topics after each phase.
	SkipCheck bool

	// Logger receives the relays' logs. Default: discarded.
	Logger *slog.Logger
	// Progress receives the settings before the first phase, reports on
	// each phase while it runs (every ProgressInterval, default 5s; one
	// line rewritten in place if ProgressTerminal) and one line per phase
	// when it ends. Default: discarded.
	Progress io.Writer
	// Details makes each phase's line on Progress list every figure.
	Details          bool
	ProgressInterval time.Duration
	ProgressTerminal bool
}

func (c Config) withDefaults() Config {
	if c.Schema == "" && !c.external() {
		c.Schema = "bench_" + randomHex()
	}
	c.Topics = cmp.Or(c.Topics, 1)
	c.Partitions = cmp.Or(c.Partitions, 12)
	c.PayloadSize = cmp.Or(c.PayloadSize, 256)
	c.Keys = cmp.Or(c.Keys, 10000)
	c.Duration = cmp.Or(c.Duration, 10*time.Second)
	c.Warmup = cmp.Or(c.Warmup, time.Second)
	c.Writers = cmp.Or(c.Writers, 4)
	c.RowsPerTx = cmp.Or(c.RowsPerTx, 1)
	if len(c.Relays) == 0 && !c.external() {
		c.Relays = []int{1}
	}
	c.Rounds = cmp.Or(c.Rounds, 3)
	c.BatchSize = cmp.Or(c.BatchSize, 1000)
	c.PollInterval = cmp.Or(c.PollInterval, 500*time.Millisecond)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	c.ProgressInterval = cmp.Or(c.ProgressInterval, 5*time.Second)
	return c
}

func (c Config) validate() error {
	switch {
	case c.DatabaseURL == "":
		return errors.New("no database url")
	case len(c.Brokers) == 0:
		return errors.New("no kafka brokers")
	case c.Preload < 0 || c.Rate < 0:
		return errors.New("preload and rate must not be negative")
	case c.Preload == 0 && c.Rate == 0 && !c.InsertStorm:
		return errors.New("nothing to deliver: set a preload, a rate or both")
	case c.Topics < 1 || c.Partitions < 1 || c.PayloadSize < 0 || c.Writers < 1 || c.RowsPerTx < 1 || c.Rounds < 1:
		return errors.New("topics, partitions, writers, rows per transaction and rounds must be at least 1")
	}
	if c.Outage > 0 && (c.KafkaDown == nil || c.KafkaUp == nil) {
		return errors.New("an outage needs a broker the bench can stop and restart")
	}
	for _, n := range c.Relays {
		if n < 1 {
			return fmt.Errorf("relay instance count %d: must be at least 1", n)
		}
		if c.KillOneAfter > 0 && n < 2 {
			return fmt.Errorf("relay instance count %d: killing one needs at least 2, so others remain", n)
		}
		if c.KillOneAfter > 0 && n > maxKillInstances {
			return fmt.Errorf("relay instance count %d: killing one follows at most %d", n, maxKillInstances)
		}
	}
	if c.KillOneAfter < 0 {
		return errors.New("kill-one-after must not be negative")
	}
	if c.external() {
		return c.validateExternal()
	}
	return relay.ValidSchema(c.Schema)
}

// external reports whether the run measures relays that already run.
func (c Config) external() bool { return c.ExternalSchema != "" }

// validateExternal refuses the settings that only make sense for relays
// and a schema of the bench's own.
func (c Config) validateExternal() error {
	switch {
	case c.Schema != "" || c.Keep:
		return errors.New("external schema: the bench's own schema (schema, keep) does not apply")
	case len(c.Relays) > 0 || c.Baseline || c.KillOneAfter > 0:
		return errors.New("external schema: the relays already run; the bench starts no relay or baseline and kills none")
	case c.DeleteOnSend || c.Outage > 0 || c.VacuumInterval > 0 || c.InsertStorm:
		return errors.New("external schema: delete on send, outage, vacuum and the insert storm act on the bench's own relays and broker")
	}
	return relay.ValidSchema(c.ExternalSchema)
}

func randomHex() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// variant is one contestant: the baseline loop, n relay instances, or the
// relays already running against an external schema (instances 0: unknown).
type variant struct {
	name      string
	baseline  bool
	external  bool
	instances int
	// reference marks the variant the others' ratios are taken against
	// (the baseline loop, or the quiet relay of an insert storm).
	reference bool
	// quiet runs the relay with its wake-up off and the wake-up trigger
	// disabled: it adds nothing to the writers' inserts.
	quiet  bool
	phases []Phase
}

// Run measures every variant for cfg.Rounds rounds and returns the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// The settings, before any work starts.
	newReport(cfg, "", nil).writeSettings(cfg.Progress)
	env, err := setup(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer env.close(context.WithoutCancel(ctx))
	env.prog = &progress{w: cfg.Progress, every: cfg.ProgressInterval, tty: cfg.ProgressTerminal}

	var variants []*variant
	switch {
	case cfg.InsertStorm:
		variants = append(variants, &variant{name: "no wake-up", quiet: true, reference: true, instances: 1})
	case cfg.Baseline:
		variants = append(variants, &variant{name: "baseline", baseline: true, reference: true, instances: 1})
	}
	for _, n := range cfg.Relays {
		variants = append(variants, &variant{name: fmt.Sprintf("relay x%d", n), instances: n})
	}
	if cfg.external() {
		variants = append(variants, &variant{name: "external", external: true})
	}
	phaseNo := 0
	for round := range cfg.Rounds {
		// ABC, CBA, ABC, …: each variant runs as often first as last.
		order := variants
		if round%2 == 1 {
			order = make([]*variant, len(variants))
			for i, v := range variants {
				order[len(variants)-1-i] = v
			}
		}
		for _, v := range order {
			phaseNo++
			last := round == cfg.Rounds-1 && v == order[len(order)-1]
			env.prog.begin(fmt.Sprintf("round %d %s", round+1, v.name))
			p, err := env.runPhase(ctx, v, round+1, phaseNo, last)
			env.prog.end()
			if err != nil {
				return nil, fmt.Errorf("%s, round %d: %w", v.name, round+1, err)
			}
			v.phases = append(v.phases, p)
			fmt.Fprintf(cfg.Progress, "round %d %-10s %s\n", round+1, v.name, p.summary(cfg.Details))
		}
	}
	return newReport(cfg, env.runID, variants), nil
}

// env is what every phase shares: the schema, the bench's own pool (for
// loading, streaming and watching) and an admin Kafka client.
type env struct {
	cfg   Config
	prog  *progress // nil until the phases start
	runID string
	tag   string // in the application_name of the run's sessions (see writerApp)
	pool  *pgxpool.Pool
	// writers is the writers' pool of the phase that runs, nil when the
	// writers use pool (external relays).
	writers *pgxpool.Pool
	admin   *kgo.Client
	payload []byte
}

func setup(ctx context.Context, cfg Config) (*env, error) {
	if cfg.external() {
		return setupExternal(ctx, cfg)
	}
	poolCfg, err := relay.PoolConfig(cfg.DatabaseURL, cfg.Schema)
	if err != nil {
		return nil, err
	}
	exists, err := schemaExists(ctx, poolCfg, cfg.Schema)
	if err != nil {
		return nil, err
	}
	if exists {
		// Never truncate someone's outbox: the bench wants a schema
		// of its own.
		return nil, fmt.Errorf("schema %s exists; the bench creates (and drops) its own: pick another name", cfg.Schema)
	}
	m, err := relay.NewMigrator(ctx, poolCfg, cfg.Schema)
	if err != nil {
		return nil, err
	}
	_, err = m.Up(ctx)
	_ = m.Close()
	e := &env{cfg: cfg, runID: cfg.Schema, tag: randomHex()}
	if err == nil {
		err = e.open(ctx, poolCfg)
	}
	if err != nil {
		e.dropSchema(ctx)
		return nil, err
	}
	return e, nil
}

// schemaExists looks schema up with a connection of its own.
func schemaExists(ctx context.Context, poolCfg *pgxpool.Config, schema string) (bool, error) {
	conn, err := pgx.ConnectConfig(ctx, poolCfg.ConnConfig)
	if err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&exists)
	if err != nil {
		return false, fmt.Errorf("look up schema: %w", err)
	}
	return exists, nil
}

// open creates what every phase shares: the bench's pool (for loading,
// streaming and watching), the admin Kafka client and the payload.
func (e *env) open(ctx context.Context, poolCfg *pgxpool.Config) error {
	var err error
	poolCfg.MaxConns = int32(e.cfg.Writers + 2)
	poolCfg.ConnConfig.RuntimeParams["application_name"] = "relay-bench-app"
	if e.pool, err = pgxpool.NewWithConfig(ctx, poolCfg); err != nil {
		return fmt.Errorf("pool: %w", err)
	}
	if e.admin, err = kgo.NewClient(kgo.SeedBrokers(e.cfg.Brokers...)); err != nil {
		e.pool.Close()
		return fmt.Errorf("kafka admin client: %w", err)
	}
	e.payload = make([]byte, e.cfg.PayloadSize)
	_, _ = rand.Read(e.payload)
	return nil
}

func (e *env) close(ctx context.Context) {
	e.admin.Close()
	e.pool.Close()
	if !e.cfg.Keep && !e.cfg.external() {
		e.dropSchema(ctx)
	}
}

func (e *env) dropSchema(ctx context.Context) {
	conn, err := pgx.Connect(ctx, e.cfg.DatabaseURL)
	if err != nil {
		e.cfg.Logger.Warn("bench_drop_schema_failed", "schema", e.cfg.Schema, "error", err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP SCHEMA "+pgx.Identifier{e.cfg.Schema}.Sanitize()+" CASCADE"); err != nil {
		e.cfg.Logger.Warn("bench_drop_schema_failed", "schema", e.cfg.Schema, "error", err)
	}
}
