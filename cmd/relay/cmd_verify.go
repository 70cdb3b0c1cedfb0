package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/verify"
)

func verifyCommand() *command {
	return &command{
		name:    "verify",
		summary: "check that Kafka still holds the records of sent rows",
		args:    "[--since 1h|2006-01-02T15:04:05Z] [--topic T]... [--json] [--allow-truncated]",
		about: `Audits delivery end to end: for every sent row in the window it reads the
record at the row's recorded partition and offset and checks its outbox-id
and outbox-uuid headers, key and value (by SHA-256) against the row. Each row
is ok or:

  missing     no record at the offset: the log ends before it, the topic or
              partition is gone, or the offset is absent inside the log.
              Lost after the acknowledgement (unclean leader election, a
              broker that lost its data, a deleted topic).
  truncated   the offset is below the partition's log start: retention or
              DeleteRecords removed it. Benign when the topic's retention is
              shorter than the window.
  mismatched  another record is at the offset, or its key or value differs
              (the topic was recreated, or the row was edited after sending).

On a compacted topic (cleanup.policy=compact) an offset inside the log without
a record was compacted away: such rows are counted as compacted, not missing.

It prints a table per partition, the first problem rows and a summary, and
exits 0 when every row is ok, 1 when a row is missing or mismatched, or
truncated unless --allow-truncated, and 2 on bad usage. Only rows still in
messages can be checked: sent rows are kept for RELAY_SENT_RETENTION.
The database, schema and brokers come from the RELAY_* variables.`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			since := fs.String("since", "", "only rows sent since then: a duration back from now (1h) or a time (2006-01-02T15:04:05Z); default: every retained row")
			var topics []string
			fs.Func("topic", "only rows of this topic; repeat it or give a comma-separated list", func(s string) error {
				for t := range strings.SplitSeq(s, ",") {
					if t = strings.TrimSpace(t); t != "" {
						topics = append(topics, t)
					}
				}
				return nil
			})
			outbox := outboxFlag(fs)
			asJSON := fs.Bool("json", false, "print the report as JSON")
			allowTruncated := fs.Bool("allow-truncated", false, "exit 0 even if rows were truncated by retention (missing and mismatched rows still fail)")
			chunk := fs.Int("chunk-size", verify.DefaultChunkSize, "rows read from Postgres at once")
			examples := fs.Int("examples", verify.DefaultMaxExamples, "list at most this many problem rows")
			return noArgs("verify", func(ctx context.Context) error {
				from, err := parseSince(*since, time.Now())
				if err != nil {
					return usageErrorf("verify: --since: %v", err)
				}
				if *chunk < 1 {
					return usageErrorf("verify: --chunk-size %d: must be at least 1", *chunk)
				}
				if *examples < 0 {
					return usageErrorf("verify: --examples %d: must not be negative", *examples)
				}
				cfg, err := env.outboxConfig(*outbox)
				if err != nil {
					return err
				}
				opts := verify.Options{Since: from, Topics: topics, ChunkSize: *chunk, MaxExamples: max(*examples, 1)}
				rep, err := runVerify(ctx, cfg, env.getenv, opts)
				if err != nil {
					return schemaHint(err, cfg.schema())
				}
				if *examples == 0 {
					rep.Examples = rep.Examples[:0]
				}
				if rep.Total.Checked == 0 {
					fmt.Fprintln(env.stderr, "no sent rows in the window (sent rows are kept for RELAY_SENT_RETENTION; 0 keeps none)")
				}
				failed := verifyFailed(rep.Total, *allowTruncated)
				if *asJSON {
					if err := writeJSON(env.stdout, toVerifyJSON(rep, !failed)); err != nil {
						return err
					}
				} else if err := printVerify(env.stdout, rep); err != nil {
					return err
				}
				if failed {
					return fmt.Errorf("verify: %s", summary(rep.Total))
				}
				return nil
			})
		},
	}
}

// verifyFailed says whether the report fails the check.
func verifyFailed(c verify.Counts, allowTruncated bool) bool {
	return c.Missing > 0 || c.Mismatched > 0 || (c.Truncated > 0 && !allowTruncated)
}

// runVerify connects to the outbox and Kafka as configured (getenv is the
// environment cfg came from) and verifies.
func runVerify(ctx context.Context, cfg Config, getenv func(string) string, opts verify.Options) (verify.Report, error) {
	pool, err := commandPool(ctx, cfg)
	if err != nil {
		return verify.Report{}, err
	}
	defer pool.Close()
	secOpts, err := kafkaSecurityOpts(cfg, getenv)
	if err != nil {
		return verify.Report{}, err
	}
	client, err := kgo.NewClient(append(secOpts, kgo.SeedBrokers(cfg.KafkaBrokers...), kgo.ClientID(cfg.ClientID))...)
	if err != nil {
		return verify.Report{}, fmt.Errorf("kafka client: %w", err)
	}
	defer client.Close()
	return verify.Run(ctx, pool, client, opts)
}

// commandPool is the small pool of a one-shot command (stuck, verify).
func commandPool(ctx context.Context, cfg Config) (*pgxpool.Pool, error) {
	poolCfg, err := relay.PoolConfig(cfg.DatabaseURL, cfg.schema())
	if err != nil {
		return nil, err
	}
	poolCfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	return pool, nil
}

func summary(c verify.Counts) string {
	s := fmt.Sprintf("%d rows checked: %d ok, %d missing, %d truncated, %d mismatched", c.Checked, c.OK, c.Missing, c.Truncated, c.Mismatched)
	if c.Compacted > 0 {
		s += fmt.Sprintf(", %d compacted away", c.Compacted)
	}
	return s
}

func printVerify(w io.Writer, rep verify.Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tPARTITION\tCHECKED\tOK\tMISSING\tTRUNCATED\tMISMATCHED\tCOMPACTED\tLOG START\tLOG END")
	offset := func(o int64) string {
		if o < 0 {
			return "-"
		}
		return fmt.Sprint(o)
	}
	for _, p := range rep.Partitions {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", p.Topic, p.Partition, p.Checked, p.OK, p.Missing, p.Truncated, p.Mismatched,
			p.Compacted, offset(p.LogStart), offset(p.LogEnd))
	}
	for _, t := range rep.Topics() {
		fmt.Fprintf(tw, "%s\t(all)\t%d\t%d\t%d\t%d\t%d\t%d\t\t\n", t.Topic, t.Checked, t.OK, t.Missing, t.Truncated, t.Mismatched, t.Compacted)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rep.Examples) > 0 {
		problems := rep.Total.Missing + rep.Total.Truncated + rep.Total.Mismatched
		if int64(len(rep.Examples)) < problems {
			fmt.Fprintf(w, "\nFirst %d of %d problem rows (see them all with --examples %d):\n", len(rep.Examples), problems, problems)
		} else {
			fmt.Fprintf(w, "\nProblem rows:\n")
		}
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTOPIC\tPARTITION\tOFFSET\tPROBLEM\tDETAIL")
		for _, e := range rep.Examples {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%s\n", e.ID, e.Topic, e.Partition, e.Offset, e.Problem, e.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	window := "every retained sent row"
	if !rep.Since.IsZero() {
		window = "rows sent since " + rep.Since.UTC().Format(time.RFC3339)
	}
	_, err := fmt.Fprintf(w, "\n%s, %s\n", window, summary(rep.Total))
	return err
}

// verifyJSON is the --json shape of a report.
type verifyJSON struct {
	// OK is true when the command exits 0.
	OK         bool                     `json:"ok"`
	Since      *time.Time               `json:"since,omitempty"`
	Total      verify.Counts            `json:"total"`
	Topics     []verify.TopicReport     `json:"topics"`
	Partitions []verify.PartitionReport `json:"partitions"`
	Examples   []verify.Example         `json:"examples"`
}

func toVerifyJSON(rep verify.Report, ok bool) verifyJSON {
	j := verifyJSON{OK: ok, Total: rep.Total, Topics: rep.Topics(), Partitions: rep.Partitions, Examples: rep.Examples}
	if j.Topics == nil {
		j.Topics = []verify.TopicReport{}
	}
	if !rep.Since.IsZero() {
		s := rep.Since.UTC()
		j.Since = &s
	}
	return j
}
