package layout

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The limits the copy keeps a row within, so that the INSERT into
// messages cannot fail whatever the application wrote: a topic longer
// than Kafka's 249 characters is cut to its first 60 characters and its length (it is invalid anyway, and the relay
// escalates it with the cut name as its reason). Keys are copied whole:
// messages indexes them by hash (migration 00003), so no key is too long
// for it, and a key the broker refuses is escalated alone by the relay.
const (
	maxTopicBytes     = 249
	topicMarkerPrefix = 60 // bytes of an over-long topic kept in its marker
)

// column is what the catalog says of one column.
type column struct {
	typ      string // format_type, for messages
	base     string // the type's name, domains resolved to their base
	category string // pg_type.typcategory of the base type
}

// tableInfo reads the table's columns; ok is false when there is no such
// table.
func tableInfo(ctx context.Context, conn *pgx.Conn, t Table) (cols map[string]column, ok bool, err error) {
	rows, err := conn.Query(ctx, `
SELECT a.attname, format_type(a.atttypid, a.atttypmod), bt.typname, bt.typcategory::text
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`, t.Schema, t.Name)
	if err != nil {
		return nil, false, err
	}
	cols = map[string]column{}
	for rows.Next() {
		var name string
		var c column
		if err := rows.Scan(&name, &c.typ, &c.base, &c.category); err != nil {
			return nil, false, err
		}
		cols[name] = c
	}
	if err := rows.Err(); err != nil {
		return nil, false, err
	}
	return cols, len(cols) > 0, nil
}

// role is how a column is used; each takes some types.
type role int

const (
	roleTopic role = iota
	roleKey
	rolePayload
	roleHeader
	roleTimestamp
	roleTracing
	roleUUID
)

// textual reports whether a column of this type reads well as text: string
// types, numbers, enums, uuid, booleans, dates and times, json.
func textual(c column) bool {
	switch c.category {
	case "S", "N", "E", "B", "D":
		return true
	}
	return c.base == "uuid" || c.base == "json" || c.base == "jsonb"
}

// expr returns the SQL expression that reads NEW.col for r, or an error
// saying which types r takes.
func expr(r role, name string, c column) (string, error) {
	ref := "NEW." + pgx.Identifier{name}.Sanitize()
	switch r {
	case rolePayload:
		if c.base == "bytea" {
			return ref, nil
		}
		if c.category == "S" || c.base == "json" || c.base == "jsonb" {
			return "convert_to(" + ref + "::text, 'UTF8')", nil
		}
		return "", fmt.Errorf("has type %s, which cannot be a payload: use bytea, text, varchar, json or jsonb", c.typ)
	case roleKey:
		if c.base == "bytea" {
			return ref, nil
		}
		if textual(c) {
			return "convert_to(" + ref + "::text, 'UTF8')", nil
		}
		return "", fmt.Errorf("has type %s, which cannot be a key: use bytea or a type with a text form (text, varchar, uuid, a number)", c.typ)
	case roleTopic, roleHeader:
		if textual(c) {
			return ref + "::text", nil
		}
		what := "part of a topic"
		if r == roleHeader {
			what = "a header"
		}
		return "", fmt.Errorf("has type %s, which cannot be %s: use text, varchar, uuid, a number, an enum, a boolean, a date or time, or json", c.typ, what)
	case roleTimestamp:
		switch c.base {
		case "timestamptz", "timestamp":
			// infinity has no epoch milliseconds: no header.
			return "CASE WHEN isfinite(" + ref + ") THEN (extract(epoch FROM " + ref + ") * 1000)::bigint::text END", nil
		case "int8":
			return ref + "::text", nil
		}
		return "", fmt.Errorf("has type %s, which cannot be a timestamp: use timestamptz, timestamp or bigint (epoch milliseconds)", c.typ)
	case roleTracing:
		if c.category == "S" {
			return ref + "::text", nil
		}
		return "", fmt.Errorf("has type %s, which cannot hold a span context: use text or varchar", c.typ)
	case roleUUID:
		if c.base == "uuid" {
			return ref, nil
		}
		return "", nil // not a uuid: the row gets a random one
	}
	panic("layout: unknown role")
}

// literal quotes s as a dollar-quoted SQL string constant, whose text is
// taken as it is whatever standard_conforming_strings says.
func literal(s string) string {
	for i := 0; ; i++ {
		tag := fmt.Sprintf("$l%d$", i)
		if !strings.Contains(s, tag) && !strings.HasSuffix(s, fmt.Sprintf("$l%d", i)) {
			return tag + s + tag
		}
	}
}

// compiled is a mapping checked against the catalog: the body of its
// trigger function.
type compiled struct {
	body string
}

// compile checks m against the table's columns and writes the function
// body. Every failure is an *Error.
func compile(m Mapping, cols map[string]column, messages string) (compiled, error) {
	get := func(r role, c Column) (string, error) {
		col, ok := cols[c.Name]
		if !ok {
			return "", &Error{Setting: c.Setting, Column: c.Name, Problem: fmt.Sprintf("does not exist in %s", m.Table)}
		}
		e, err := expr(r, c.Name, col)
		if err != nil {
			return "", &Error{Setting: c.Setting, Column: c.Name, Problem: err.Error()}
		}
		return e, nil
	}
	var topic []string
	for _, p := range m.Topic.Parts {
		if p.Column == "" {
			topic = append(topic, literal(p.Literal))
			continue
		}
		e, err := get(roleTopic, Column{p.Column, m.Topic.Setting})
		if err != nil {
			return compiled{}, err
		}
		// A NULL would make the whole topic NULL and fail the INSERT:
		// it renders as a marker that no topic can hold instead, and
		// the relay escalates the row with the rendered name.
		topic = append(topic, "coalesce("+e+", "+literal("("+p.Column+" is null)")+")")
	}
	key := "NULL::bytea"
	if m.Key.Name != "" {
		e, err := get(roleKey, m.Key)
		if err != nil {
			return compiled{}, err
		}
		key = e
	}
	payload, err := get(rolePayload, m.Payload)
	if err != nil {
		return compiled{}, err
	}
	var headers []string
	for _, h := range m.Headers {
		e, err := get(roleHeader, h.Column)
		if err != nil {
			return compiled{}, err
		}
		headers = append(headers, literal(h.Header), e)
	}
	if m.Timestamp.Name != "" {
		e, err := get(roleTimestamp, m.Timestamp)
		if err != nil {
			return compiled{}, err
		}
		headers = append(headers, literal(TimestampHeader), e)
	}
	if _, ok := cols[m.Tracing.Name]; m.Tracing.Name != "" && (ok || !m.TracingIfPresent) {
		e, err := get(roleTracing, m.Tracing)
		if err != nil {
			return compiled{}, err
		}
		// Java properties text (key=value lines, with backslash escapes).
		for _, name := range []string{"traceparent", "tracestate"} {
			pattern := `(?:^|[\r\n])[ \t]*` + name + `[ \t]*[=:][ \t]*([^\r\n]*)`
			headers = append(headers, literal(name),
				"regexp_replace(substring("+e+" FROM "+literal(pattern)+"), "+literal(`\\(.)`)+", "+literal(`\1`)+", 'g')")
		}
	}
	uuid := ""
	if m.UUID.Name != "" {
		if col, ok := cols[m.UUID.Name]; ok {
			uuid, _ = expr(roleUUID, m.UUID.Name, col)
		}
	}

	var b strings.Builder
	b.WriteString("\nDECLARE\n    v_topic text;\n    v_key bytea;\nBEGIN\n")
	fmt.Fprintf(&b, "    v_topic := %s;\n", strings.Join(topic, " || "))
	fmt.Fprintf(&b, "    v_key := %s;\n", key)
	fmt.Fprintf(&b, "    IF v_topic = '' THEN\n        v_topic := %s;\n    END IF;\n", literal("(empty topic from "+m.Topic.Text+")"))
	fmt.Fprintf(&b, "    IF octet_length(v_topic) > %d THEN\n        v_topic := left(v_topic, %d) || %s || octet_length(v_topic) || %s;\n    END IF;\n",
		maxTopicBytes, topicMarkerPrefix, literal("… ("), literal(" bytes; Kafka allows 249)"))
	target := "topic, key, payload, headers"
	values := fmt.Sprintf("v_topic, v_key, %s, jsonb_strip_nulls(jsonb_build_object(%s))", payload, strings.Join(headers, ", "))
	if uuid != "" {
		target += ", uuid"
		values += ", coalesce(" + uuid + ", gen_random_uuid())"
	}
	fmt.Fprintf(&b, "    INSERT INTO %s (%s)\n    VALUES (%s);\n    RETURN NULL;\nEND\n", messages, target, values)
	return compiled{body: b.String()}, nil
}

// names of the objects a mapping installs: the function in the relay's
// schema, the trigger on the mapped table.
func functionName(t Table) string { return shorten("copy_" + t.Schema + "_" + t.Name) }
func triggerName(relaySchema string) string {
	return shorten("outbox_relay_copy_to_" + relaySchema)
}

// shorten keeps a name within Postgres' 63 bytes: a longer one becomes its
// first 46 bytes, '_' and 16 hex digits of its SHA-256.
func shorten(name string) string {
	if len(name) <= 63 {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	cut := 46
	for cut > 0 && name[cut]&0xC0 == 0x80 { // not inside a UTF-8 sequence
		cut--
	}
	return name[:cut] + "_" + hex.EncodeToString(sum[:8])
}

// Installed says what Install did for one mapping.
type Installed struct {
	Table    Table
	Function string // schema-qualified
	Trigger  string
	// Changed is false when the function and the trigger were already in
	// place as they are: nothing was written and no lock was taken on the
	// table.
	Changed bool
}

// Install checks each mapping against the catalog and installs its copy
// trigger: AFTER INSERT ... FOR EACH ROW on the mapped table, calling a
// SECURITY DEFINER function in relaySchema, owned by the role that installs
// it, with a fixed search_path. The application's role then needs no grant
// on the outbox; the installing role needs INSERT on relaySchema.messages,
// USAGE on the table's schema and TRIGGER on the table (or to own it).
//
// It is idempotent, and safe when several relays start at once: an
// advisory lock serialises them, and a function and trigger already as
// they should be are left alone, so a restart takes no lock on the
// application's table. A mapping that does not fit its table returns an
// *Error naming the setting and the column.
func Install(ctx context.Context, conn *pgx.Conn, relaySchema string, mappings []Mapping) ([]Installed, error) {
	var out []Installed
	for _, m := range mappings {
		inst, err := install(ctx, conn, relaySchema, m)
		if err != nil {
			return out, err
		}
		out = append(out, inst)
	}
	return out, nil
}

func install(ctx context.Context, conn *pgx.Conn, relaySchema string, m Mapping) (Installed, error) {
	inst := Installed{Table: m.Table}
	cols, ok, err := tableInfo(ctx, conn, m.Table)
	if err != nil {
		return inst, fmt.Errorf("read the columns of %s: %w", m.Table, err)
	}
	if !ok {
		return inst, &Error{Setting: m.TableSetting, Problem: fmt.Sprintf("table %s does not exist (or is not a table); names are as the catalog spells them, usually lower case", m.Table)}
	}
	c, err := compile(m, cols, pgx.Identifier{relaySchema, "messages"}.Sanitize())
	if err != nil {
		return inst, err
	}
	fn := pgx.Identifier{relaySchema, functionName(m.Table)}.Sanitize()
	tbl := pgx.Identifier{m.Table.Schema, m.Table.Name}.Sanitize()
	trig := triggerName(relaySchema)
	inst.Function, inst.Trigger = fn, trig
	body := c.body

	tx, err := conn.Begin(ctx)
	if err != nil {
		return inst, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	h := fnv.New64a()
	_, _ = h.Write([]byte("outbox-relay-layout:" + m.Table.String()))
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(h.Sum64()>>1)); err != nil {
		return inst, fmt.Errorf("lock the install of %s: %w", m.Table, err)
	}
	// The function: replaced only when its text differs.
	var current *string
	err = tx.QueryRow(ctx, `
SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = $1 AND p.proname = $2 AND p.prosecdef`, relaySchema, functionName(m.Table)).Scan(&current)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return inst, fmt.Errorf("read %s: %w", fn, err)
	}
	if current == nil || *current != body {
		ddl := "CREATE OR REPLACE FUNCTION " + fn + "() RETURNS trigger\n" +
			"    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp\n" +
			"AS " + literal(body)
		if _, err := tx.Exec(ctx, ddl); err != nil {
			return inst, installError(m, fn, err)
		}
		// Trigger functions cannot be called directly, and without
		// EXECUTE no one else can attach this one to another table.
		if _, err := tx.Exec(ctx, "REVOKE ALL ON FUNCTION "+fn+"() FROM PUBLIC"); err != nil {
			return inst, installError(m, fn, err)
		}
		inst.Changed = true
	}
	// The function runs as its owner: without these privileges every
	// application INSERT would fail, so refuse to install it.
	var owner string
	var canInsert, canWake bool
	err = tx.QueryRow(ctx, `
SELECT pg_get_userbyid(p.proowner),
       has_table_privilege(p.proowner, $2::regclass, 'INSERT'),
       has_sequence_privilege(p.proowner, $3::regclass, 'SELECT')
FROM pg_proc p WHERE p.oid = $1::regprocedure`,
		fn+"()", pgx.Identifier{relaySchema, "messages"}.Sanitize(), pgx.Identifier{relaySchema, "relay_idle_until"}.Sanitize(),
	).Scan(&owner, &canInsert, &canWake)
	if err != nil {
		return inst, fmt.Errorf("read the privileges of %s: %w", fn, err)
	}
	if !canInsert || !canWake {
		return inst, &Error{Setting: m.TableSetting, Problem: fmt.Sprintf(
			"the copy function %s runs as its owner, %s, who lacks INSERT on %s.messages or SELECT on %s.relay_idle_until: every insert into %s would fail. Grant them, or install as the outbox's owner (relay migrate up)",
			fn, owner, relaySchema, relaySchema, m.Table)}
	}
	var present bool
	err = tx.QueryRow(ctx, `
SELECT EXISTS (
    SELECT 1 FROM pg_trigger tg
    JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_proc p ON p.oid = tg.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
    WHERE n.nspname = $1 AND c.relname = $2 AND tg.tgname = $3
      AND pn.nspname = $4 AND p.proname = $5
      AND tg.tgenabled = 'O' AND tg.tgtype = 5)`, // ROW | INSERT, AFTER
		m.Table.Schema, m.Table.Name, trig, relaySchema, functionName(m.Table)).Scan(&present)
	if err != nil {
		return inst, fmt.Errorf("read the triggers of %s: %w", m.Table, err)
	}
	if !present {
		// Creating a trigger locks the table against writes while
		// it waits for the transactions that wrote to it: give up
		// rather than stall the application behind a long one.
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '5s'"); err != nil {
			return inst, err
		}
		ddl := "CREATE OR REPLACE TRIGGER " + pgx.Identifier{trig}.Sanitize() + " AFTER INSERT ON " + tbl +
			" FOR EACH ROW EXECUTE FUNCTION " + fn + "()"
		if _, err := tx.Exec(ctx, ddl); err != nil {
			return inst, installError(m, fn, err)
		}
		inst.Changed = true
	}
	if err := tx.Commit(ctx); err != nil {
		return inst, installError(m, fn, err)
	}
	return inst, nil
}

// installError explains the failures an operator can fix.
func installError(m Mapping, fn string, err error) error {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		switch pgErr.Code {
		case "42501": // insufficient_privilege
			return &Error{Setting: m.TableSetting, Problem: fmt.Sprintf(
				"cannot install the copy trigger on %s: %s (the relay's role needs USAGE on schema %s and TRIGGER on the table, e.g. GRANT TRIGGER ON %s TO <relay role>; and to own %s if it exists)",
				m.Table, pgErr.Message, pgx.Identifier{m.Table.Schema}.Sanitize(), pgx.Identifier{m.Table.Schema, m.Table.Name}.Sanitize(), fn)}
		case "55P03": // lock_not_available
			return fmt.Errorf("install the copy trigger on %s: the table stayed locked by other transactions for 5s; start again when they are done: %w", m.Table, err)
		}
	}
	return fmt.Errorf("install the copy trigger on %s: %w", m.Table, err)
}
