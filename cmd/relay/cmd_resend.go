package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/outboxrelay/relay/stuck"
	"github.com/outboxrelay/relay/verify"
)

func resendCommand() *command {
	return &command{
		name:    "resend",
		summary: "publish sent rows again (after relay verify found them missing from Kafka)",
		args:    "--ids 1,2 | --from-verify FILE | [--topic T] [--since 2h]  [--yes]",
		about: `Makes sent rows pending again, so that the relay publishes them once more: with
the same outbox-id, in id order within each key (before the later pending rows
of their key), through the normal path (acks=all, retries, stuck rows).
Consumers see them as duplicates if they already had them, and dedup on
outbox-id.

Select the rows with exactly one of:
  --ids 1,2,3          these rows
  --from-verify FILE   the missing and mismatched rows of 'relay verify --json'
                       output (truncated rows are left alone: retention
                       removed them)
  --topic T, --since   every sent row of a topic and/or sent since then

Only rows still in messages can be resent: sent rows are kept for
RELAY_SENT_RETENTION. An id that is not a sent row fails the command with exit
code 2 and nothing is done. The command asks for confirmation on a terminal
and wants --yes otherwise; each resend is written to audit_log.`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			var ids []int64
			fs.Func("ids", "resend these rows: comma-separated ids; repeatable", func(s string) error {
				for part := range strings.SplitSeq(s, ",") {
					id, err := strconv.ParseInt(strings.TrimSpace(part), 10, 64)
					if err != nil || id <= 0 {
						return fmt.Errorf("%q is not a row id", part)
					}
					ids = append(ids, id)
				}
				return nil
			})
			fromVerify := fs.String("from-verify", "", "resend the missing and mismatched rows of this 'relay verify --json' report")
			topic := fs.String("topic", "", "resend the sent rows of this topic")
			since := fs.String("since", "", "resend the rows sent since then: a duration back from now (2h) or a time")
			outbox := outboxFlag(fs)
			yes := fs.Bool("yes", false, "confirm (asked on a terminal)")
			operator := fs.String("operator", env.getenv("USER"), "your name, recorded in audit_log")
			return noArgs("resend", func(ctx context.Context) error {
				modes := 0
				for _, set := range []bool{len(ids) > 0, *fromVerify != "", *topic != "" || *since != ""} {
					if set {
						modes++
					}
				}
				if modes != 1 {
					return usageErrorf("resend: give --ids, or --from-verify FILE, or --topic and/or --since (exactly one of them)")
				}
				from, err := parseSince(*since, time.Now())
				if err != nil {
					return usageErrorf("resend: --since: %v", err)
				}
				detail := ""
				switch {
				case len(ids) > 0:
					detail = "--ids"
				case *fromVerify != "":
					detail = "--from-verify " + *fromVerify
					if ids, err = idsFromVerify(*fromVerify, env); err != nil {
						return err
					}
					if len(ids) == 0 {
						fmt.Fprintf(env.stdout, "the report lists no missing or mismatched row; nothing to resend\n")
						return nil
					}
				default:
					detail = strings.TrimSpace(fmt.Sprintf("--topic %q --since %q", *topic, *since))
				}
				cfg, err := env.outboxConfig(*outbox)
				if err != nil {
					return err
				}
				return resend(ctx, env, cfg, stuck.SentFilter{IDs: ids, Topic: *topic, Since: from}, *yes,
					stuck.AuditEntry{Operator: *operator, Source: stuck.SourceCLI, Action: "resend", Detail: detail})
			})
		},
	}
}

// idsFromVerify reads a 'relay verify --json' report and returns the ids of
// its missing and mismatched rows.
func idsFromVerify(path string, env *environment) ([]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usageErrorf("resend: --from-verify: %v", err)
	}
	var rep verifyJSON
	if err := json.Unmarshal(b, &rep); err != nil || rep.Examples == nil {
		return nil, usageErrorf("resend: --from-verify %s: not the output of 'relay verify --json'", path)
	}
	var ids []int64
	for _, e := range rep.Examples {
		if e.Problem == verify.ProblemMissing || e.Problem == verify.ProblemMismatched {
			ids = append(ids, e.ID)
		}
	}
	if want := rep.Total.Missing + rep.Total.Mismatched; int64(len(ids)) < want {
		// verify lists at most --examples problem rows.
		fmt.Fprintf(env.stderr, "warning: the report lists %d of its %d missing or mismatched rows; resending those. "+
			"To resend them all, run 'relay verify --json --examples %d' and resend from its report\n", len(ids), want, want)
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

func resend(ctx context.Context, env *environment, cfg Config, f stuck.SentFilter, yes bool, audit stuck.AuditEntry) error {
	pool, err := commandPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("resend: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	rows, err := stuck.SentRows(ctx, tx, f)
	if err != nil {
		return schemaHint(err, cfg.schema())
	}
	ids := make([]int64, len(rows))
	topics := map[string]int{}
	for i, r := range rows {
		ids[i] = r.ID
		topics[r.Topic]++
	}
	if missing := stuck.Missing(f.IDs, ids); len(missing) > 0 {
		return usageErrorf("resend: no sent row %s (pending, stuck, or deleted after RELAY_SENT_RETENTION); nothing done", joinIDs(missing))
	}
	if len(rows) == 0 {
		fmt.Fprintln(env.stdout, "no sent rows match; nothing done")
		return nil
	}
	var parts []string
	for _, t := range slices.Sorted(maps.Keys(topics)) {
		parts = append(parts, fmt.Sprintf("%s: %d", t, topics[t]))
	}
	if err := env.confirm(yes, "resend", fmt.Sprintf("publish %d sent row(s) again (%s)", len(rows), strings.Join(parts, ", "))); err != nil {
		return err
	}
	done, err := stuck.Resend(ctx, tx, ids)
	if err != nil {
		return err
	}
	if len(done) != len(ids) {
		return fmt.Errorf("resend: %d of the %d rows changed while this ran; nothing done, run it again", len(ids)-len(done), len(ids))
	}
	audit.IDs = done
	if err := stuck.Audit(ctx, tx, audit); err != nil {
		return schemaHint(err, cfg.schema())
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("resend: %w", err)
	}
	fmt.Fprintf(env.stdout, "resent %d row(s)%s: pending again; the relay publishes them with the same outbox-id, in id order within each key\n",
		len(done), idList(done))
	return nil
}
