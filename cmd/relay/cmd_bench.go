package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"golang.org/x/term"

	"github.com/outboxrelay/relay/internal/bench"
	"github.com/outboxrelay/relay/relay"
)

func benchCommand() *command {
	return &command{
		name:    "bench",
		summary: "measure throughput and latency against a naive outbox loop",
		args:    "[flags]",
		about: `Creates an outbox schema of its own (dropped at the end unless --keep), and
measures the relay (--relays instances in this process) against the naive
loop (--baseline: one worker; BEGIN; SELECT … FOR UPDATE SKIP LOCKED;
ProduceSync; UPDATE or DELETE; COMMIT) on the same database and broker,
alternating them for --rounds rounds. It prints the medians and the ratio of
medians against the baseline.

Each phase pre-loads --preload rows before its clock starts, and/or streams
--rate rows/s for --duration while the variant runs. rows/s is rows divided by
the time until every row was acknowledged by Kafka and none is pending.
commit→ack latency (streamed rows) runs from the writer's COMMIT returning to
the producing client receiving the broker's ack. CPU and peak RSS are this
process's (relays, writers, bench), not Kafka's or Postgres's.

--kill-one-after kills one instance of each relay variant that long into
each phase, once it has records in flight to Kafka, as a crash would: its
Postgres connections close and its backends are terminated (its open
transactions roll back), its Kafka client closes, no graceful drain. The rows
it had handed to Kafka and not marked sent are its share; the takeover is the
time from the kill until a survivor has Kafka's ack of the last of them. The
target is two poll intervals. Every --relays count must be at least 2.

Without --brokers the bench starts an in-memory Kafka broker (kfake) in a
child process, so it does not share this process's CPU accounting.

--external-schema measures relays that already run (a deployed relay, a
staging stack) against that existing, migrated outbox schema, with
--brokers the Kafka they produce to. The bench starts no relay and no
baseline, and never creates, truncates or drops the schema: it INSERTs
REAL ROWS INTO THAT OUTBOX (use a staging environment, not production),
for topics of its own (bench-<random>-…, which it creates with the
cluster's default replication factor and deletes at the end; the relays
must be allowed to produce to them), and reads them back from Kafka. Its
rows stay in the outbox as sent rows until the relays' retention deletes
them. rows/s then runs until the bench has consumed every row and none is
pending; latency is commit→consumed, which includes the consumer's fetch
delay; CPU and RSS are not the bench's to measure and print as "-". The
flags that configure the bench's own relays, baseline or schema are
refused with it.

The database is RELAY_DATABASE_URL unless --database-url is given.`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			var cfg bench.Config
			dbURL := fs.String("database-url", "", "Postgres connection string; default RELAY_DATABASE_URL, else "+defaultDatabaseURL)
			brokers := fs.String("brokers", "", "comma-separated Kafka brokers; default: start an in-memory broker in a child process")
			fs.StringVar(&cfg.Schema, "schema", "", "schema the bench creates and drops (must not exist); default bench_<random>")
			fs.StringVar(&cfg.ExternalSchema, "external-schema", "", "measure relays already running against this existing, migrated outbox `schema` (needs --brokers): the bench inserts real rows into it, for topics of its own, and starts no relay")
			fs.BoolVar(&cfg.Keep, "keep", false, "keep the schema and the last phase's topics at the end")
			fs.IntVar(&cfg.Topics, "topics", 1, "topics rows are spread over")
			fs.IntVar(&cfg.Partitions, "partitions", 12, "partitions per topic")
			fs.IntVar(&cfg.PayloadSize, "payload", 256, "payload size in bytes")
			fs.IntVar(&cfg.Keys, "keys", 10000, "distinct keys; negative: rows without a key")
			fs.IntVar(&cfg.Preload, "preload", 0, "rows inserted before each phase's clock starts")
			fs.IntVar(&cfg.Rate, "rate", 0, "rows/s the writers commit while the variant runs; 0: none")
			fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long the writers stream")
			fs.DurationVar(&cfg.Warmup, "warmup", time.Second, "streamed rows of the first stretch left out of latency")
			fs.IntVar(&cfg.Writers, "writers", 4, "concurrent writer connections")
			fs.IntVar(&cfg.RowsPerTx, "rows-per-tx", 1, "rows per streamed transaction")
			fs.BoolVar(&cfg.InsertStorm, "insert-storm", false, "the writers commit as fast as they can for --duration (no --rate), and each relay variant is measured against a relay with the wake-up off and the wake-up trigger disabled instead of the naive loop: the insert rate an application keeps next to the relay")
			relays := fs.String("relays", "1", "comma-separated relay instance counts to measure, e.g. 1,2,3")
			fs.BoolVar(&cfg.Baseline, "baseline", true, "measure the naive loop too and report ratios against it")
			fs.IntVar(&cfg.Rounds, "rounds", 3, "rounds; medians are taken over them")
			fs.BoolVar(&cfg.DeleteOnSend, "delete-on-send", false, "delete rows once acknowledged (retention 0); the baseline deletes too")
			fs.IntVar(&cfg.BatchSize, "batch-size", 1000, "rows per claim, relay and baseline")
			fs.IntVar(&cfg.InFlightBatches, "in-flight", 0, "claimed batches a relay may have awaiting Kafka at once; 0: the relay's default (2)")
			fs.IntVar(&cfg.PoolSize, "pool-size", 0, "max Postgres connections per relay instance; 0: pgxpool's default")
			fs.DurationVar(&cfg.ClaimLinger, "claim-linger", 0, "the relay's RELAY_CLAIM_LINGER: after a claim that did not fill its batch, claim again no sooner than this long after it")
			wakeup := fs.Bool("wakeup", true, "relay wake-up on")
			fs.DurationVar(&cfg.PollInterval, "poll-interval", 500*time.Millisecond, "relay poll interval; the baseline's sleep after an empty claim")
			fs.DurationVar(&cfg.BrokerLatency, "broker-latency", 0, "delay each produce response of the bench's in-memory broker by this long, as a broker farther away or slower to replicate (acks=all) would")
			fs.DurationVar(&cfg.Outage, "outage", 0, "stop the in-memory broker for this long at the start of each phase, then restart it (bounded memory under an outage)")
			fs.DurationVar(&cfg.VacuumInterval, "vacuum-interval", 0, "run VACUUM on the outbox table this often during each phase (stands in for autovacuum); 0: never")
			fs.DurationVar(&cfg.KillOneAfter, "kill-one-after", 0, "kill one relay instance this long into each phase, as a crash would, and report how long the others take to deliver its rows (needs every --relays count >= 2); 0: no kill")
			check := fs.Bool("check", true, "consume each phase's topics and check count, duplicates and per-key order")
			asJSON := fs.Bool("json", false, "print the report as JSON instead of a table")
			fs.BoolVar(&cfg.Details, "details", false, "add the p90 and the CPU of Postgres and the broker to the table and to each phase's line (wider than 100 columns); the JSON report always has them")
			fs.DurationVar(&cfg.ProgressInterval, "progress-interval", 5*time.Second, "how often a phase reports its progress on stderr when stderr is not a terminal")
			cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to `file`; samples carry a variant label (pprof -tagfocus variant=...)")
			verbose := fs.Bool("v", false, "log the relays' warnings and errors to stderr")
			return noArgs("bench", func(ctx context.Context) error {
				cfg.DisableWakeup = !*wakeup
				cfg.SkipCheck = !*check
				cfg.DatabaseURL = *dbURL
				if cfg.DatabaseURL == "" {
					cfg.DatabaseURL = cmp.Or(env.getenv("RELAY_DATABASE_URL"), defaultDatabaseURL)
				}
				if cfg.ExternalSchema != "" {
					if err := externalBenchFlags(fs, *brokers); err != nil {
						return err
					}
					if err := relay.ValidSchema(cfg.ExternalSchema); err != nil {
						return usageErrorf("bench: --external-schema: %v", err)
					}
					cfg.Baseline = false // --baseline defaults to true; here there is none
				} else {
					for _, s := range strings.Split(*relays, ",") {
						n, err := strconv.Atoi(strings.TrimSpace(s))
						if err != nil || n < 1 {
							return usageErrorf("bench: --relays %q: want instance counts like 1,2,3", *relays)
						}
						cfg.Relays = append(cfg.Relays, n)
					}
				}
				if cfg.KillOneAfter < 0 || (cfg.KillOneAfter > 0 && slices.Min(cfg.Relays) < 2) {
					return usageErrorf("bench: --kill-one-after needs every --relays count to be at least 2, so that others survive")
				}
				if cfg.InsertStorm && (cfg.Rate != 0 || cfg.ExternalSchema != "") {
					return usageErrorf("bench: --insert-storm writes as fast as it can: drop --rate (and --external-schema)")
				}
				if cfg.Preload < 0 || cfg.Rate < 0 || (cfg.Preload == 0 && cfg.Rate == 0 && !cfg.InsertStorm) {
					return usageErrorf("bench: set --preload, --rate or both (non-negative), or --insert-storm")
				}
				if cfg.Partitions < 1 || cfg.Topics < 1 || cfg.Writers < 1 || cfg.RowsPerTx < 1 || cfg.Rounds < 1 || cfg.BatchSize < 1 {
					return usageErrorf("bench: --partitions, --topics, --writers, --rows-per-tx, --rounds and --batch-size must be at least 1")
				}
				cfg.Progress = env.stderr
				if f, ok := env.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
					cfg.ProgressTerminal = true
				}
				if *verbose {
					cfg.Logger = slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
				}
				if cfg.Outage > 0 && *brokers != "" {
					return usageErrorf("bench: --outage needs the bench's own broker: drop --brokers")
				}
				if cfg.BrokerLatency < 0 || (cfg.BrokerLatency > 0 && *brokers != "") {
					return usageErrorf("bench: --broker-latency (not negative) needs the bench's own broker: drop --brokers")
				}
				if *brokers != "" {
					cfg.Brokers = strings.Split(*brokers, ",")
				} else {
					k := &benchKafka{partitions: cfg.Partitions, latency: cfg.BrokerLatency}
					if err := k.start(ctx); err != nil {
						return err
					}
					defer func() { _ = k.stop(ctx) }()
					cfg.Brokers = []string{k.addr}
					cfg.KafkaDown, cfg.KafkaUp = k.stop, k.start
					cfg.BrokerPID = func() int { return k.pid }
				}
				if *cpuProfile != "" {
					f, err := os.Create(*cpuProfile)
					if err != nil {
						return fmt.Errorf("bench: %w", err)
					}
					defer f.Close()
					if err := pprof.StartCPUProfile(f); err != nil {
						return fmt.Errorf("bench: %w", err)
					}
					defer pprof.StopCPUProfile()
				}
				report, err := bench.Run(ctx, cfg)
				if err != nil {
					return fmt.Errorf("bench: %w", err)
				}
				if cfg.ExternalSchema != "" {
					// The bench only inserts into someone's outbox; say
					// what it leaves there and how to remove it.
					fmt.Fprintf(env.stderr, "bench: its rows stay in %s.messages, sent, until the relays' retention deletes them; their topics (%s*) are gone, so relay verify reports them missing. To delete them now: DELETE FROM %[1]s.messages WHERE topic LIKE '%[2]s%%'\n",
						cfg.ExternalSchema, report.Scenario.TopicPrefix)
				}
				if *asJSON {
					enc := json.NewEncoder(env.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(report)
				}
				return report.WriteTable(env.stdout, cfg.Details)
			})
		},
	}
}

// inProcessBenchFlags configure the relays, the baseline or the schema the
// bench runs itself; with --external-schema it runs none of them.
var inProcessBenchFlags = []string{"schema", "keep", "relays", "baseline", "delete-on-send", "batch-size",
	"in-flight", "pool-size", "claim-linger", "wakeup", "poll-interval", "outage", "vacuum-interval", "kill-one-after"}

// externalBenchFlags checks the command line of relay bench
// --external-schema: the brokers the running relays produce to, and none
// of the in-process flags (--baseline=false is accepted, as it says what
// the mode does anyway).
func externalBenchFlags(fs *flag.FlagSet, brokers string) error {
	if brokers == "" {
		return usageErrorf("bench: --external-schema needs --brokers: the Kafka the running relays produce to")
	}
	var refused []string
	fs.Visit(func(f *flag.Flag) {
		if slices.Contains(inProcessBenchFlags, f.Name) && (f.Name != "baseline" || f.Value.String() != "false") {
			refused = append(refused, "--"+f.Name)
		}
	})
	if len(refused) > 0 {
		return usageErrorf("bench: %s: not with --external-schema, where the relays already run and the bench starts no relay or baseline of its own", strings.Join(refused, ", "))
	}
	return nil
}

// benchKafka is the in-memory broker of relay bench, in a child process:
// this binary re-executed as "relay bench-kafka". Its own process keeps its
// CPU and memory out of the bench's getrusage and RSS figures. It can be
// stopped and restarted on the same address, for --outage.
type benchKafka struct {
	partitions int
	latency    time.Duration // added to every produce response
	addr       string        // after the first start: the port it got
	pid        int           // of the running child; 0 when stopped
	stopFn     func()
}

func (k *benchKafka) start(ctx context.Context) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench: find own binary: %w", err)
	}
	listen := cmp.Or(k.addr, "127.0.0.1:0")
	cmd := exec.Command(self, "bench-kafka", "--partitions", strconv.Itoa(k.partitions), "--addr", listen,
		"--produce-latency", k.latency.String())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("bench: start kafka: %w", err)
	}
	stop := func() {
		_ = stdin.Close() // the child exits when its stdin closes
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		t := time.NewTimer(5 * time.Second)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			_ = cmd.Process.Kill()
			<-done
		}
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case addr := <-line:
		if addr == "" {
			stop()
			return errors.New("bench: the in-memory kafka child printed no address")
		}
		k.addr, k.pid, k.stopFn = addr, cmd.Process.Pid, stop
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	_ = cmd.Process.Kill()
	stop()
	return errors.New("bench: the in-memory kafka child did not start")
}

func (k *benchKafka) stop(context.Context) error {
	if k.stopFn != nil {
		k.stopFn()
		k.stopFn, k.pid = nil, 0
	}
	return nil
}

// benchKafkaCommand is the child process benchKafka.start runs: an
// in-memory broker on --addr (a free port at first, the same one again on a
// restart) that prints its address and runs until its stdin closes or it is
// stopped by a signal. Hidden from the command list.
func benchKafkaCommand() *command {
	return &command{
		name:    "bench-kafka",
		hidden:  true,
		summary: "internal: the in-memory Kafka broker of relay bench",
		about: `Runs an in-memory Kafka broker (kfake) on a free local port, prints its
address on stdout and runs until stdin closes. relay bench starts it.`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			partitions := fs.Int("partitions", 12, "partitions of topics created on first use")
			addr := fs.String("addr", "127.0.0.1:0", "listen `host:port`")
			latency := fs.Duration("produce-latency", 0, "delay each produce response by this long")
			return noArgs("bench-kafka", func(ctx context.Context) error {
				c, err := kfake.NewCluster(
					kfake.NumBrokers(1),
					kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, *addr) }),
					kfake.AllowAutoTopicCreation(),
					kfake.DefaultNumPartitions(*partitions),
				)
				if err != nil {
					return fmt.Errorf("bench-kafka: %w", err)
				}
				defer c.Close()
				if *latency > 0 {
					delayProduce(c, *latency)
				}
				fmt.Fprintln(env.stdout, c.ListenAddrs()[0])
				eof := make(chan struct{})
				go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(eof) }()
				select {
				case <-ctx.Done():
				case <-eof:
				}
				return nil
			})
		},
	}
}

// delayProduce makes c answer every produce request d late without holding
// up the others: each request waits on its own (kfake's SleepControl), so
// the requests a client pipelines on its connection overlap their delays,
// as round trips to a distant broker do.
func delayProduce(c *kfake.Cluster, d time.Duration) {
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.SleepControl(func() { time.Sleep(d) })
		return nil, nil, false // not handled: the broker answers it as usual
	})
}
