package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/relay"
)

func stuckCommand() *command {
	return &command{
		name:    "stuck",
		summary: "list, show, requeue or discard rows escalated to stuck_messages",
		args:    "list|show|requeue|discard [flags] [ids]",
		about: `Inspects and acts on the rows in stuck_messages: rows that could never be
delivered as they are, or that failed RELAY_MAX_ATTEMPTS times.

  list     [--topic T] [--key K] [--since 2h|2006-01-02T15:04:05Z] [--limit N] [--json]
  show     ID [--json]
  requeue  ID... | --topic T | --all
           back into messages with the original id and attempts reset; delivered
           before the rows of its key that it was holding back
  discard  ID... --yes [--operator NAME] [--reason TEXT]
           delete for good; an audit copy stays in discarded_messages

The database and schema come from RELAY_DATABASE_URL and RELAY_SCHEMA.
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

// stuckPool connects to the configured outbox.
func stuckPool(ctx context.Context, env *environment) (*pgxpool.Pool, error) {
	cfg, err := loadConfig(env.getenv)
	if err != nil {
		return nil, err
	}
	return commandPool(ctx, cfg)
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
	limit := fs.Int("limit", 100, "at most this many rows")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	rest, done, err := parseAction(fs, env, "relay stuck list [--topic T] [--key K] [--since 2h] [--limit N] [--json]", args)
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
	filter := relay.StuckFilter{Topic: *topic, Since: from, Limit: *limit}
	if *key != "" {
		filter.Key = []byte(*key)
	}
	pool, err := stuckPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	rows, err := relay.ListStuck(ctx, pool, filter)
	if err != nil {
		return err
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
	pool, err := stuckPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	r, err := relay.GetStuck(ctx, pool, ids[0])
	if err != nil {
		if errors.Is(err, relay.ErrNotFound) {
			return usageErrorf("stuck show: no stuck row %d", ids[0])
		}
		return err
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
	fmt.Fprintf(w, "blocking\t%d pending row(s) of its key\n", r.Blocking)
	return w.Flush()
}

func stuckRequeue(ctx context.Context, env *environment, args []string) error {
	fs := flag.NewFlagSet("stuck requeue", flag.ContinueOnError)
	topic := fs.String("topic", "", "requeue every stuck row of this topic")
	all := fs.Bool("all", false, "requeue every stuck row")
	rest, done, err := parseAction(fs, env, "relay stuck requeue ID... | --topic T | --all", args)
	if err != nil || done {
		return err
	}
	ids, err := parseIDs("requeue", rest)
	if err != nil {
		return err
	}
	modes := 0
	for _, set := range []bool{len(ids) > 0, *topic != "", *all} {
		if set {
			modes++
		}
	}
	if modes != 1 {
		return usageErrorf("stuck requeue: give row ids, or --topic T, or --all (exactly one of them)")
	}
	pool, err := stuckPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	moved, err := relay.Requeue(ctx, pool, ids, *topic)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "requeued %d row(s)%s\n", len(moved), idList(moved))
	if missing := len(ids) - len(moved); len(ids) > 0 && missing > 0 {
		return fmt.Errorf("stuck requeue: %d of the given ids are not in stuck_messages", missing)
	}
	return nil
}

func stuckDiscard(ctx context.Context, env *environment, args []string) error {
	fs := flag.NewFlagSet("stuck discard", flag.ContinueOnError)
	yes := fs.Bool("yes", false, "confirm: the rows are deleted for good (an audit copy is kept)")
	operator := fs.String("operator", env.getenv("USER"), "your name, recorded in discarded_messages")
	reason := fs.String("reason", "", "why, recorded in discarded_messages")
	rest, done, err := parseAction(fs, env, "relay stuck discard ID... --yes [--operator NAME] [--reason TEXT]", args)
	if err != nil || done {
		return err
	}
	ids, err := parseIDs("discard", rest)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		return usageErrorf("stuck discard: give the ids of the rows to discard")
	}
	if !*yes {
		return usageErrorf("stuck discard: this deletes %d row(s) for good; add --yes to confirm", len(ids))
	}
	pool, err := stuckPool(ctx, env)
	if err != nil {
		return err
	}
	defer pool.Close()
	gone, err := relay.Discard(ctx, pool, ids, *operator, *reason)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "discarded %d row(s)%s; audit copies are in discarded_messages\n", len(gone), idList(gone))
	if missing := len(ids) - len(gone); missing > 0 {
		return fmt.Errorf("stuck discard: %d of the given ids are not in stuck_messages", missing)
	}
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
}

func toStuckJSON(r relay.StuckRow, withPayload bool) stuckJSON {
	j := stuckJSON{
		ID: r.ID, Topic: r.Topic, KeyBase64: r.Key, Headers: r.Headers,
		PayloadSize: len(r.Payload), Tombstone: r.Payload == nil,
		CreatedAt: r.CreatedAt.UTC(), EscalatedAt: r.EscalatedAt.UTC(), Attempts: r.Attempts,
		ErrorKind: r.ErrorKind, FirstError: r.FirstError, LastError: r.LastError, Blocking: r.Blocking,
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
