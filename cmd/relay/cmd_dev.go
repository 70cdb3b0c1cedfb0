package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

func devCommand() *command {
	return &command{
		name:    "dev",
		summary: "run the relay against an embedded in-memory Kafka broker, for trying it out",
		args:    "[flags]",
		about: `Starts an in-memory Kafka broker (franz-go's kfake) on --kafka-addr and runs
the relay against it, exactly as 'relay run' would (RELAY_KAFKA_BROKERS is
ignored). Topics are created on first use. Point any Kafka client at the
printed address to read what the relay produces.

THE IN-MEMORY BROKER KEEPS NOTHING ACROSS RESTARTS. Rows it received are
marked sent in Postgres and are not produced again after a restart.
Never use it for data you care about.`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			addr := fs.String("kafka-addr", "127.0.0.1:9092", "the `host:port` the in-memory broker listens on; port 0 picks a free port, shown in the banner")
			partitions := fs.Int("partitions", 3, "number of partitions of topics created on first use")
			return noArgs("dev", func(ctx context.Context) error {
				if host, _, err := net.SplitHostPort(*addr); err != nil || host == "" || checkHostPort(*addr, true) != nil {
					return usageErrorf("dev: --kafka-addr %q: want host:port, e.g. 127.0.0.1:9092", *addr)
				}
				if *partitions < 1 {
					return usageErrorf("dev: --partitions %d: must be at least 1", *partitions)
				}
				cfg, err := loadConfig(env.getenv)
				if err != nil {
					return err
				}
				return dev(ctx, cfg, *addr, *partitions, env)
			})
		},
	}
}

func dev(ctx context.Context, cfg Config, addr string, partitions int, env *environment) error {
	log := cfg.newLogger(env.stderr)
	if env.getenv("RELAY_KAFKA_BROKERS") != "" {
		log.Warn("dev_ignores_kafka_brokers", "kafka_brokers", cfg.KafkaBrokers)
	}
	// The in-memory broker has one replica of everything and says so in
	// the banner; warning about it on every topic would only be noise.
	cfg.CheckTopicDurability, cfg.RequireDurableTopics = false, false
	if cfg.kafkaSecured() {
		// The in-memory broker speaks plaintext only.
		log.Warn("dev_ignores_kafka_security", "kafka_tls", cfg.KafkaTLS, "kafka_sasl_mechanism", cfg.KafkaSASLMechanism)
		cfg = cfg.withoutKafkaSecurity()
	}
	cluster, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		// kfake listens on 127.0.0.1 and the port it is given; ListenFn
		// binds exactly the address asked for, host included.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, addr) }),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(partitions),
	)
	if err != nil {
		return fmt.Errorf("dev: in-memory kafka on %s: %w", addr, err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	log.Warn("dev_kafka_started", "addr", brokers[0], "partitions", partitions,
		"warning", "in-memory broker: nothing survives a restart")

	d := &daemon{
		cfg:     cfg,
		getenv:  env.getenv,
		logger:  log,
		brokers: brokers,
		// Let produce requests create topics, as a broker with
		// auto.create.topics.enable would.
		kafkaOpts: []kgo.Opt{kgo.AllowAutoTopicCreation()},
		mode:      "dev",
		unknown:   env.unknown,
		started: func(httpAddr string) {
			printDevBanner(env.stdout, brokers[0], httpAddr, cfg)
		},
	}
	return d.run(ctx)
}

func printDevBanner(w io.Writer, kafkaAddr, httpAddr string, cfg Config) {
	line := strings.Repeat("=", 78)
	fmt.Fprintf(w, `%[1]s
 OUTBOX RELAY — DEV MODE, with an in-memory Kafka broker
%[1]s
 Kafka broker:  %[2]s
 Database:      %[3]s, schema %[4]s

 Read what the relay produces (any Kafka client works):
   kcat -b %[2]s -C -t <topic> -f '%%k %%s %%h\n'

 Insert a row (in your application, inside the transaction of the change):
   INSERT INTO %[4]s.messages (topic, key, payload, headers)
   VALUES ('orders', 'order-1', '{"status":"created"}', '{"type":"order_created"}');
`, line, kafkaAddr, redactedDatabase(cfg.DatabaseURL), cfg.schema())
	if httpAddr != "" {
		httpAddr = dialable(httpAddr)
		fmt.Fprintf(w, "\n Health:        http://%s/livez  http://%s/readyz\n", httpAddr, httpAddr)
	}
	fmt.Fprintf(w, `
 !!! WARNING: THE IN-MEMORY BROKER KEEPS NOTHING ACROSS RESTARTS. !!!
 !!! EVERY TOPIC AND RECORD IS GONE WHEN THIS PROCESS STOPS, AND  !!!
 !!! ROWS ALREADY MARKED SENT IN POSTGRES ARE NOT PRODUCED AGAIN. !!!
 Stop with Ctrl-C.
%s
`, line)
}

// dialable turns a listen address into one a browser or curl can open: a
// wildcard host (":8080", "[::]:8080", "0.0.0.0:8080") becomes localhost.
func dialable(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		return net.JoinHostPort("localhost", port)
	}
	return addr
}
