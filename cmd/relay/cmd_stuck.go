package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/internal/pgstore"
	"github.com/outboxrelay/relay/stuck"
)

func stuckCommand() *command {
	return &command{
		name:    "stuck",
		summary: "list, show, requeue or discard rows escalated to stuck_messages",
		args:    "list|show|requeue|discard [flags] [ids]",
		about: `Inspects and acts on the rows in stuck_messages: rows that could never be
delivered as they are, or that failed RELAY_MAX_ATTEMPTS times.

  list     [--topic T] [--key K] [--error-kind K] [--since 2h|2006-01-02T15:04:05Z]
           [--limit N] [--json]
           at most 100 rows unless --limit (0: all); a cut-off list says so
  show     ID [--json]
  requeue  ID... | FILTER | --all  [--yes]
           back into messages with the original id and attempts reset; delivered
           before the rows of its key that it was holding back. Warns about rows
           that failed for good (row_fatal): they fail again unless their cause
           was fixed on the Kafka side. A requeued row keeps its deliver_after and
           partition; its expires_at is cleared, so an expired row is delivered
           however late
  discard  ID... | FILTER | --all  --yes [--operator NAME] [--reason TEXT]
           delete for good; an audit copy stays in discarded_messages

FILTER is any of --topic T, --key K, --error-kind row_fatal|row_retriable|expired and
--since 2h. A requeue by filter or --all, and every discard, must be confirmed:
on a terminal the command asks, otherwise it wants --yes. Each requeue and
discard is written to audit_log with --operator (default $USER).

An id that is not in stuck_messages fails show, requeue and discard alike with
exit code 2, and nothing is done. A schema without the outbox tables (a
misspelled RELAY_SCHEMA, or not migrated) exits 2 with a hint.

The database and schema come from RELAY_DATABASE_URL and RELAY_SCHEMA; when
RELAY_SCHEMA lists several outboxes, every action wants --outbox SCHEMA.
Run 'relay stuck <action> --help' for an action's flags.`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			return func(ctx context.Context, args []string) error {
				if len(args) == 0 {
					return usageErrorf("stuck: missing action; use list, show, requeue or discard")
				}
				action, ok := stuckActions[args[0]]
				if !ok {
					return usageErrorf("stuck: unknown action %q; use list, show, requeue or discard", args[0])
				}
				return action(ctx, env, args[1:])
			}
		},
	}
}

type stuckAction func(ctx context.Context, env *environment, args []string) error

var stuckActions = map[string]stuckAction{
	"list":    stuckList,
	"show":    stuckShow,
	"requeue": stuckRequeue,
	"discard": stuckDiscard,
}

// parseAction parses flags that may come before, between or after the
// positional arguments (relay stuck discard 12 --yes) and returns the
// positional ones. done is true when --help was asked and printed.
func parseAction(fs *flag.FlagSet, env *environment, usage string, args []string) (positional []string, done bool, err error) {
	fs.SetOutput(io.Discard)
	outbox := outboxFlag(fs)
	defer func() { env.outbox = *outbox }()
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprintf(env.stdout, "Usage: %s\n\nFlags:\n", usage)
				fs.SetOutput(env.stdout)
				fs.PrintDefaults()
				return nil, true, nil
			}
			return nil, false, usageErrorf("%s: %v", fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, false, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// stuckPool connects to the outbox the command acts on (--outbox) and
// returns its schema.
func stuckPool(ctx context.Context, env *environment) (*pgxpool.Pool, string, error) {
	cfg, err := env.outboxConfig(env.outbox)
	if err != nil {
		return nil, "", err
	}
	pool, err := commandPool(ctx, cfg)
	return pool, cfg.schema(), err
}

// schemaHint turns "relation does not exist" (42P01) into advice: the
// schema is misspelled or not migrated. It is a configuration problem:
// exit 2.
func schemaHint(err error, schema string) error {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "42P01" {
		return usageErrorf("schema %s has no outbox tables (%s): check RELAY_SCHEMA, or create them with 'relay migrate up'", schema, pgErr.Message)
	}
	return err
}

func parseIDs(action string, args []string) ([]int64, error) {
	ids := make([]int64, 0, len(args))
	for _, a := range args {
		id, err := strconv.ParseInt(a, 10, 64)
		if err != nil || id <= 0 {
			return nil, usageErrorf("stuck %s: %q is not a row id", action, a)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// parseSince accepts a duration back from now ("2h") or a timestamp.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither a duration (2h) nor a time (2006-01-02T15:04:05Z)", s)
}

func stuckList(ctx context.Context, env *environment, args []string) error {
	fs := flag.NewFlagSet("stuck list", flag.ContinueOnError)
	topic := fs.String("topic", "", "only rows of this topic")
	key := fs.String("key", "", "only rows with this key (as text)")
	since := fs.String("since", "", "only rows escalated since then: a duration back from now (2h) or a time")
	kind := fs.String("error-kind", "", "only rows of this error kind: "+kindList)
	limit := fs.Int("limit", 100, "at most this many rows; 0: all")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	rest, done, err := parseAction(fs, env, "relay stuck list [--topic T] [--key K] [--error-kind K] [--since 2h] [--limit N] [--json]", args)
	if err != nil || done {
		return err
	}
	if len(rest) > 0 {
		return usageErrorf("stuck list: unexpected argument %q", rest[0])
	}
	from, err := parseSince(*since, time.Now())
	if err != nil {
		return usageErrorf("stuck list: --since: %v", err)
	}
	if *kind != "" && !pgstore.ValidErrorKind(*kind) {
		return usageErrorf("stuck list: --error-kind %q: use %s", *kind, kindList)
	}
	if *limit < 0 {
		return usageErrorf("stuck list: --limit %d: must not be negative", *limit)
	}
	filter := stuck.Filter{Topic: *topic, Since: from, ErrorKind: *kind, Limit: *limit}
	if *limit == 0 {
		filter.Limit = math.MaxInt32
	}
	if *key != "" {
		filter.Key = []byte(*key)
	}
	pool, schema, err := stuckPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	rows, err := stuck.List(ctx, pool, filter)
	if err != nil {
		return schemaHint(err, schema)
	}
	if len(rows) == filter.Limit {
		// The list may be cut off: say so, and how to see the rest.
		total, err := stuck.Count(ctx, pool, filter)
		if err != nil {
			return schemaHint(err, schema)
		}
		if total > len(rows) {
			defer fmt.Fprintf(env.stderr, "showing the first %d of %d stuck rows (by id); see the rest with --limit %d, or --limit 0 for all\n",
				len(rows), total, total)
		}
	}
	if *asJSON {
		out := make([]stuckJSON, 0, len(rows))
		for _, r := range rows {
			out = append(out, toStuckJSON(r, false))
		}
		return writeJSON(env.stdout, out)
	}
	w := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tTOPIC\tKEY\tATTEMPTS\tKIND\tESCALATED\tBLOCKING\tLAST ERROR")
	for _, r := range rows {
		fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", r.ID, r.Topic, displayBytes(r.Key, 24), r.Attempts, r.ErrorKind,
			r.EscalatedAt.UTC().Format("2006-01-02 15:04:05Z"), r.Blocking, oneLine(r.LastError, 80))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(rows) == 0 {
		fmt.Fprintln(env.stderr, "no stuck rows")
	}
	return nil
}

func stuckShow(ctx context.Context, env *environment, args []string) error {
	fs := flag.NewFlagSet("stuck show", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON (payload as base64)")
	rest, done, err := parseAction(fs, env, "relay stuck show ID [--json]", args)
	if err != nil || done {
		return err
	}
	if len(rest) != 1 {
		return usageErrorf("stuck show: want exactly one row id")
	}
	ids, err := parseIDs("show", rest)
	if err != nil {
		return err
	}
	pool, schema, err := stuckPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	r, err := stuck.Get(ctx, pool, ids[0])
	if err != nil {
		if errors.Is(err, stuck.ErrNotFound) {
			return notFound("stuck show", ids)
		}
		return schemaHint(err, schema)
	}
	if *asJSON {
		return writeJSON(env.stdout, toStuckJSON(r, true))
	}
	w := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "id\t%d\n", r.ID)
	fmt.Fprintf(w, "topic\t%s\n", r.Topic)
	fmt.Fprintf(w, "key\t%s\n", displayBytes(r.Key, 200))
	fmt.Fprintf(w, "headers\t%s\n", r.Headers)
	fmt.Fprintf(w, "payload\t%s\n", payloadSummary(r.Payload))
	fmt.Fprintf(w, "created at\t%s\n", r.CreatedAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "escalated at\t%s\n", r.EscalatedAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "attempts\t%d\n", r.Attempts)
	fmt.Fprintf(w, "error kind\t%s\n", r.ErrorKind)
	fmt.Fprintf(w, "first error\t%s\n", oneLine(r.FirstError, 500))
	fmt.Fprintf(w, "last error\t%s\n", oneLine(r.LastError, 500))
	for _, o := range rowOptions(r) {
		fmt.Fprintf(w, "%s\t%s\n", o.name, o.value)
	}
	fmt.Fprintf(w, "blocking\t%d pending row(s) of its key\n", r.Blocking)
	return w.Flush()
}

// selectionFlags are the flags of a bulk action: a filter, or --all.
type selectionFlags struct {
	topic, key, kind, since *string
	all                     *bool
}

func addSelectionFlags(fs *flag.FlagSet, verb string) selectionFlags {
	return selectionFlags{
		topic: fs.String("topic", "", verb+" the stuck rows of this topic"),
		key:   fs.String("key", "", verb+" the stuck rows with this key (as text)"),
		kind:  fs.String("error-kind", "", verb+" the stuck rows of this error kind: "+kindList),
		since: fs.String("since", "", verb+" the rows escalated since then: a duration back from now (2h) or a time"),
		all:   fs.Bool("all", false, verb+" every stuck row"),
	}
}

// filter returns the filter the flags give and whether any was given.
func (s selectionFlags) filter(command string) (stuck.Filter, bool, error) {
	from, err := parseSince(*s.since, time.Now())
	if err != nil {
		return stuck.Filter{}, false, usageErrorf("%s: --since: %v", command, err)
	}
	if k := *s.kind; k != "" && !pgstore.ValidErrorKind(k) {
		return stuck.Filter{}, false, usageErrorf("%s: --error-kind %q: use %s", command, k, kindList)
	}
	f := stuck.Filter{Topic: *s.topic, Since: from, ErrorKind: *s.kind}
	if *s.key != "" {
		f.Key = []byte(*s.key)
	}
	return f, *s.topic != "" || *s.key != "" || *s.kind != "" || *s.since != "", nil
}

// describe renders the filter for the audit log and messages.
func (s selectionFlags) describe() string {
	if *s.all {
		return "--all"
	}
	var parts []string
	for _, f := range []struct{ name, v string }{{"topic", *s.topic}, {"key", *s.key}, {"error-kind", *s.kind}, {"since", *s.since}} {
		if f.v != "" {
			parts = append(parts, fmt.Sprintf("--%s %q", f.name, f.v))
		}
	}
	return strings.Join(parts, " ")
}

// stuckBulk is what requeue and discard share: select the rows by ids or by
// filter in one transaction, confirm, act, write the audit log, commit. An id
// that is not a stuck row fails the whole command (exit 2) with nothing
// done.
func stuckBulk(ctx context.Context, env *environment, command string, ids []int64, sel selectionFlags, yes bool, idsNeedConfirm bool,
	act func(ctx context.Context, tx pgx.Tx, ids []int64) ([]int64, error), audit stuck.AuditEntry) ([]stuck.Match, error) {
	filter, filtered, err := sel.filter(command)
	if err != nil {
		return nil, err
	}
	modes := 0
	for _, set := range []bool{len(ids) > 0, filtered, *sel.all} {
		if set {
			modes++
		}
	}
	if modes != 1 {
		return nil, usageErrorf("%s: give row ids, or a filter (--topic, --key, --error-kind, --since), or --all (exactly one of them)", command)
	}
	pool, schema, err := stuckPool(ctx, env)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", command, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var rows []stuck.Match
	if len(ids) > 0 {
		rows, err = stuck.ByID(ctx, tx, ids)
		if err != nil {
			return nil, schemaHint(err, schema)
		}
		if missing := stuck.Missing(ids, matchIDs(rows)); len(missing) > 0 {
			return nil, notFound(command, missing)
		}
	} else {
		rows, err = stuck.Matching(ctx, tx, filter)
		if err != nil {
			return nil, schemaHint(err, schema)
		}
		if len(rows) == 0 {
			fmt.Fprintf(env.stdout, "no stuck rows match %s; nothing done\n", sel.describe())
			return nil, nil
		}
	}
	if len(ids) == 0 || idsNeedConfirm {
		verb, _, _ := strings.Cut(strings.TrimPrefix(command, "stuck "), " ")
		if err := env.confirm(yes, command, fmt.Sprintf("%s %d stuck row(s) (%s)", verb, len(rows), byTopic(rows))); err != nil {
			return nil, err
		}
	}
	done, err := act(ctx, tx, matchIDs(rows))
	if err != nil {
		return nil, err
	}
	if len(done) != len(rows) {
		return nil, fmt.Errorf("%s: %d of the %d rows changed while this ran (another operator?); nothing done, run it again", command, len(rows)-len(done), len(rows))
	}
	audit.IDs = done
	if len(ids) == 0 {
		audit.Detail = strings.TrimSuffix(sel.describe()+"; reason: "+audit.Detail, "; reason: ")
	}
	if err := stuck.Audit(ctx, tx, audit); err != nil {
		return nil, schemaHint(err, schema)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", command, err)
	}
	return rows, nil
}

func matchIDs(rows []stuck.Match) []int64 {
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	return ids
}

// byTopic summarises rows as "orders: 10, payments: 2".
func byTopic(rows []stuck.Match) string {
	counts := map[string]int{}
	for _, r := range rows {
		counts[r.Topic]++
	}
	var parts []string
	for _, t := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%s: %d", t, counts[t]))
	}
	return strings.Join(parts, ", ")
}

// notFound is the error of every stuck command given an id that is not in
// stuck_messages: a usage error (exit 2), the same for show, requeue and
// discard.
func notFound(command string, ids []int64) error {
	return usageErrorf("%s: no stuck row %s (see 'relay stuck list'); nothing done", command, joinIDs(ids))
}

func joinIDs(ids []int64) string {
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(parts, ", ")
}

func stuckRequeue(ctx context.Context, env *environment, args []string) error {
	fs := flag.NewFlagSet("stuck requeue", flag.ContinueOnError)
	sel := addSelectionFlags(fs, "requeue")
	yes := fs.Bool("yes", false, "confirm a requeue by filter or --all (asked on a terminal)")
	operator := fs.String("operator", env.getenv("USER"), "your name, recorded in audit_log")
	rest, done, err := parseAction(fs, env, "relay stuck requeue ID... | --topic T | --key K | --error-kind K | --since 2h | --all [--yes]", args)
	if err != nil || done {
		return err
	}
	ids, err := parseIDs("requeue", rest)
	if err != nil {
		return err
	}
	rows, err := stuckBulk(ctx, env, "stuck requeue", ids, sel, *yes, false,
		func(ctx context.Context, tx pgx.Tx, ids []int64) ([]int64, error) {
			return stuck.Requeue(ctx, tx, ids, "")
		},
		stuck.AuditEntry{Operator: *operator, Source: stuck.SourceCLI, Action: "requeue"})
	if err != nil || rows == nil {
		return err
	}
	fmt.Fprintf(env.stdout, "requeued %d row(s)%s\n", len(rows), idList(matchIDs(rows)))
	warnFatal(env, rows)
	return nil
}

// warnFatal warns about requeued rows that failed for good: the relay sends
// the same bytes again, so only a change on the Kafka side can make them go.
func warnFatal(env *environment, rows []stuck.Match) {
	var fatal []stuck.Match
	for _, r := range rows {
		if r.ErrorKind == pgstore.ErrorKindRowFatal {
			fatal = append(fatal, r)
		}
	}
	if len(fatal) == 0 {
		return
	}
	first := fatal[0]
	fmt.Fprintf(env.stderr, "warning: %d requeued row(s) had failed for good (row_fatal), e.g. row %d: %s\n"+
		"  They are sent again byte for byte, so they fail again and come back to stuck_messages unless the cause\n"+
		"  was fixed on the Kafka side (the topic created, its max.message.bytes raised, a policy changed).\n"+
		"  This command cannot check that.\n", len(fatal), first.ID, oneLine(first.LastError, 120))
}

func stuckDiscard(ctx context.Context, env *environment, args []string) error {
	fs := flag.NewFlagSet("stuck discard", flag.ContinueOnError)
	sel := addSelectionFlags(fs, "discard")
	yes := fs.Bool("yes", false, "confirm: the rows are deleted for good (an audit copy is kept); asked on a terminal")
	operator := fs.String("operator", env.getenv("USER"), "your name, recorded in discarded_messages and audit_log")
	reason := fs.String("reason", "", "why, recorded in discarded_messages")
	rest, done, err := parseAction(fs, env, "relay stuck discard ID... | --topic T | --key K | --error-kind K | --since 2h | --all  --yes [--operator NAME] [--reason TEXT]", args)
	if err != nil || done {
		return err
	}
	ids, err := parseIDs("discard", rest)
	if err != nil {
		return err
	}
	rows, err := stuckBulk(ctx, env, "stuck discard", ids, sel, *yes, true,
		func(ctx context.Context, tx pgx.Tx, ids []int64) ([]int64, error) {
			return stuck.Discard(ctx, tx, ids, *operator, *reason)
		},
		stuck.AuditEntry{Operator: *operator, Source: stuck.SourceCLI, Action: "discard", Detail: *reason})
	if err != nil || rows == nil {
		return err
	}
	fmt.Fprintf(env.stdout, "discarded %d row(s)%s; audit copies are in discarded_messages\n", len(rows), idList(matchIDs(rows)))
	return nil
}

// stuckJSON is the --json shape of a stuck row. Keys and payloads are bytes:
// they appear as base64, and keys also as text when they are valid UTF-8.
type stuckJSON struct {
	ID          int64           `json:"id"`
	Topic       string          `json:"topic"`
	Key         *string         `json:"key,omitempty"`
	KeyBase64   []byte          `json:"key_base64"`
	Headers     json.RawMessage `json:"headers"`
	PayloadSize int             `json:"payload_bytes"`
	Tombstone   bool            `json:"tombstone"`
	Payload     []byte          `json:"payload_base64,omitempty"`
	CreatedAt   time.Time       `json:"created_at"`
	EscalatedAt time.Time       `json:"escalated_at"`
	Attempts    int             `json:"attempts"`
	ErrorKind   string          `json:"error_kind"`
	FirstError  string          `json:"first_error"`
	LastError   string          `json:"last_error"`
	Blocking    int             `json:"blocking"`
	// The row's delivery options, when it set them.
	DeliverAfter *time.Time `json:"deliver_after,omitempty"`
	ExpiresAt    *time.Time `json:"expires_at,omitempty"`
	Partition    *int32     `json:"partition,omitempty"`
}

func toStuckJSON(r stuck.Row, withPayload bool) stuckJSON {
	j := stuckJSON{
		ID: r.ID, Topic: r.Topic, KeyBase64: r.Key, Headers: r.Headers,
		PayloadSize: len(r.Payload), Tombstone: r.Payload == nil,
		CreatedAt: r.CreatedAt.UTC(), EscalatedAt: r.EscalatedAt.UTC(), Attempts: r.Attempts,
		ErrorKind: r.ErrorKind, FirstError: r.FirstError, LastError: r.LastError, Blocking: r.Blocking,
		DeliverAfter: r.DeliverAfter, ExpiresAt: r.ExpiresAt, Partition: r.Partition,
	}
	if r.Key != nil && utf8.Valid(r.Key) {
		k := string(r.Key)
		j.Key = &k
	}
	if withPayload {
		j.Payload = r.Payload
	}
	return j
}

// kindList names the error kinds for flag help and errors.
var kindList = strings.Join(pgstore.ErrorKinds, ", ")

// option is one delivery option a stuck row set, for show.
type option struct{ name, value string }

// rowOptions lists the delivery options r set, in the columns' order.
func rowOptions(r stuck.Row) []option {
	var out []option
	at := func(name string, t *time.Time) {
		if t != nil {
			out = append(out, option{name, t.UTC().Format(time.RFC3339Nano)})
		}
	}
	at("deliver after", r.DeliverAfter)
	at("expires at", r.ExpiresAt)
	if r.Partition != nil {
		out = append(out, option{"partition", fmt.Sprint(*r.Partition)})
	}
	return out
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// displayBytes shows a key as text when it is printable UTF-8, else as hex.
func displayBytes(b []byte, max int) string {
	switch {
	case b == nil:
		return "(null)"
	case utf8.Valid(b) && !strings.ContainsFunc(string(b), func(r rune) bool { return r < ' ' || r == 0x7f }):
		return oneLine(string(b), max)
	default:
		return oneLine(fmt.Sprintf("0x%x", b), max)
	}
}

func payloadSummary(b []byte) string {
	if b == nil {
		return "(null: a tombstone)"
	}
	return fmt.Sprintf("%d bytes: %s", len(b), displayBytes(b, 200))
}

// oneLine shortens s to max runes on one line.
func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)
	return string(r[:max-1]) + "…"
}

func idList(ids []int64) string {
	if len(ids) == 0 || len(ids) > 20 {
		return ""
	}
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.FormatInt(id, 10)
	}
	return ": " + strings.Join(parts, " ")
}
