// Package layout maps an existing table of an application (a Debezium
// outbox table, or any table of its own layout) onto the relay's outbox:
// a trigger copies each row inserted into the table into outbox.messages,
// in the application's transaction, so the relay delivers it like any row
// of its own. It parses the mapping, checks it against the catalog, and
// generates and installs the trigger; it never reads or changes the
// application's table itself.
//
// Identifiers in the generated SQL are always quoted (pgx.Identifier), the
// few constants of a mapping (topic template text, header names, markers)
// are dollar-quoted literals, and row values only ever flow through NEW:
// nothing a row holds is interpolated into SQL.
package layout

import (
	"fmt"
	"strings"
)

// Table is a schema-qualified table name, as the catalog spells it.
type Table struct {
	Schema, Name string
}

func (t Table) String() string { return t.Schema + "." + t.Name }

// ParseTable reads "schema.table". Each part is taken as the catalog spells
// it; a part holding a dot or a double quote is written in double quotes
// ("my.schema"."Table", with "" for a quote), as in SQL.
func ParseTable(s string) (Table, error) {
	parts, err := splitQualified(s)
	if err != nil {
		return Table{}, err
	}
	if len(parts) != 2 {
		return Table{}, fmt.Errorf("%q: want schema.table, e.g. public.outboxevent", s)
	}
	return Table{Schema: parts[0], Name: parts[1]}, nil
}

func splitQualified(s string) ([]string, error) {
	var parts []string
	for i := 0; ; {
		var part string
		if i < len(s) && s[i] == '"' {
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return nil, fmt.Errorf("%q: unterminated double quote", s)
				}
				if s[j] == '"' {
					if j+1 < len(s) && s[j+1] == '"' {
						b.WriteByte('"')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			part, i = b.String(), j+1
		} else {
			j := strings.IndexByte(s[i:], '.')
			if j < 0 {
				j = len(s) - i
			}
			part, i = strings.TrimSpace(s[i:i+j]), i+j
		}
		if part == "" {
			return nil, fmt.Errorf("%q: want schema.table, e.g. public.outboxevent", s)
		}
		parts = append(parts, part)
		if i >= len(s) {
			return parts, nil
		}
		if s[i] != '.' {
			return nil, fmt.Errorf("%q: unexpected %q after a quoted name", s, s[i:])
		}
		i++
	}
}

// Column is a column of the mapped table, with the setting that named it
// (for errors). An empty Name means "not mapped".
type Column struct {
	Name    string
	Setting string
}

// Header copies a column into a record header.
type Header struct {
	Column
	Header string
}

// Template renders a topic name from literal text and columns.
type Template struct {
	Setting string
	Text    string // as configured, for messages
	Parts   []Part
}

// Part is one piece of a template: literal text, or a column's value.
type Part struct {
	Literal string
	Column  string // set for a column reference
}

// kafkaTopicChar reports whether Kafka allows c in a topic name.
func kafkaTopicChar(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
}

// ParseTemplate reads a topic template: literal text with {column}
// references, e.g. "orders.{aggregate_type}". The literal text may hold
// only what Kafka allows in a topic name (ASCII letters, digits, '.', '_',
// '-'): anything else could never make a valid topic.
func ParseTemplate(s, setting string) (Template, error) {
	t := Template{Setting: setting, Text: s}
	rest := s
	for rest != "" {
		open := strings.IndexByte(rest, '{')
		lit := rest
		if open >= 0 {
			lit = rest[:open]
		}
		if strings.IndexByte(lit, '}') >= 0 {
			return Template{}, fmt.Errorf("%q: '}' without '{'", s)
		}
		for _, c := range lit {
			if !kafkaTopicChar(c) {
				return Template{}, fmt.Errorf("%q: %q cannot be in a topic name (Kafka allows ASCII letters, digits, '.', '_' and '-'); name columns as {column}", s, c)
			}
		}
		if lit != "" {
			t.Parts = append(t.Parts, Part{Literal: lit})
		}
		if open < 0 {
			break
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return Template{}, fmt.Errorf("%q: '{' without '}'", s)
		}
		col := rest[open+1 : open+end]
		if col == "" || strings.ContainsAny(col, "{") {
			return Template{}, fmt.Errorf("%q: want a column name between '{' and '}'", s)
		}
		t.Parts = append(t.Parts, Part{Column: col})
		rest = rest[open+end+1:]
	}
	if len(t.Parts) == 0 {
		return Template{}, fmt.Errorf("empty: name a topic, a {column} or a template such as orders.{aggregate_type}")
	}
	return t, nil
}

// Mapping says how a row inserted into Table becomes a row of the outbox.
type Mapping struct {
	Table        Table
	TableSetting string
	Topic        Template
	Key          Column // optional: no key
	Payload      Column // required
	// Timestamp, optional, goes into the header TimestampHeader as epoch
	// milliseconds, from which the relay takes the record timestamp
	// (outbox.messages has no timestamp column of its own but created_at).
	Timestamp Column
	Headers   []Header
	// Tracing, optional, is a column of Java properties text (Debezium's
	// tracingspancontext) whose traceparent and tracestate become
	// headers. TracingIfPresent makes a missing column mean "none".
	Tracing          Column
	TracingIfPresent bool
	// UUID, optional, is a uuid column whose value becomes the row's uuid
	// (the outbox-uuid header), so the relay's dedup id is the event's.
	UUID Column
}

// TimestampHeader carries the mapped timestamp column, as decimal epoch
// milliseconds.
const TimestampHeader = "outbox-timestamp"

// reservedHeaders are set by the relay on every record.
var reservedHeaders = map[string]bool{"outbox-id": true, "outbox-uuid": true, TimestampHeader: true, "traceparent": true, "tracestate": true}

// ParseHeaders reads "column[:header],..." (header defaults to the column
// name).
func ParseHeaders(s, setting string) ([]Header, error) {
	var out []Header
	seen := map[string]bool{}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		col, name, _ := strings.Cut(item, ":")
		if name == "" {
			name = col
		}
		if err := checkHeaderName(name); err != nil {
			return nil, fmt.Errorf("%q: %v", item, err)
		}
		if seen[name] {
			return nil, fmt.Errorf("header %q is given twice", name)
		}
		seen[name] = true
		out = append(out, Header{Column: Column{Name: col, Setting: setting}, Header: name})
	}
	return out, nil
}

func checkHeaderName(name string) error {
	if name == "" {
		return fmt.Errorf("empty header name")
	}
	for _, c := range name {
		if !kafkaTopicChar(c) {
			return fmt.Errorf("header name %q: use ASCII letters, digits, '.', '_' and '-'", name)
		}
	}
	if reservedHeaders[name] {
		return fmt.Errorf("header name %q is the relay's own", name)
	}
	return nil
}

// DebeziumSettings are the Debezium outbox event router's options the
// relay honours, with the names of the settings that carry them.
type DebeziumSettings struct {
	Table             string // schema.table
	EventID           string // table.field.event.id
	EventKey          string // table.field.event.key
	EventPayload      string // table.field.event.payload
	EventTimestamp    string // table.field.event.timestamp; empty: none
	RouteByField      string // route.by.field
	TopicReplacement  string // route.topic.replacement, with ${routedByValue}
	AdditionalPlace   string // table.fields.additional.placement: column:header[:alias],...
	TracingSpanColumn string // tracing.span.context.field; empty: tracingspancontext if present
	// Setting names, for errors: by option.
	Names DebeziumSettingNames
}

// DebeziumSettingNames are the environment variables of DebeziumSettings.
type DebeziumSettingNames struct {
	Table, EventID, EventKey, EventPayload, EventTimestamp, RouteByField, TopicReplacement, AdditionalPlace, TracingSpanColumn string
}

// DebeziumTracingColumn is Debezium's default tracing.span.context.field.
const DebeziumTracingColumn = "tracingspancontext"

// Debezium builds the mapping of a Debezium outbox table: the topic is
// route.topic.replacement with ${routedByValue} replaced by the
// route.by.field column, the key is the event key column, the value the
// payload column, and the event id goes into header "id", as the router's
// defaults do. Errors name the setting.
func Debezium(s DebeziumSettings) (Mapping, error) {
	n := s.Names
	var m Mapping
	t, err := ParseTable(s.Table)
	if err != nil {
		return m, settingError(n.Table, "%v", err)
	}
	m.Table, m.TableSetting = t, n.Table
	for _, c := range []struct{ name, value string }{
		{n.EventID, s.EventID}, {n.EventKey, s.EventKey}, {n.EventPayload, s.EventPayload}, {n.RouteByField, s.RouteByField},
	} {
		if strings.TrimSpace(c.value) == "" {
			return m, settingError(c.name, "must name a column")
		}
	}
	// route.topic.regex is (?<routedByValue>.*) by default: the
	// replacement's ${routedByValue} is the whole column value.
	const ref = "${routedByValue}"
	if strings.Count(s.TopicReplacement, ref) == 0 {
		return m, settingError(n.TopicReplacement, "%q does not hold %s", s.TopicReplacement, ref)
	}
	if strings.ContainsAny(strings.ReplaceAll(s.TopicReplacement, ref, ""), "{}$") {
		return m, settingError(n.TopicReplacement, "%q: only %s can be replaced (route.topic.regex is not supported)", s.TopicReplacement, ref)
	}
	tmpl, err := ParseTemplate(strings.ReplaceAll(s.TopicReplacement, ref, "{"+s.RouteByField+"}"), n.TopicReplacement)
	if err != nil {
		return m, settingError(n.TopicReplacement, "%v", err)
	}
	tmpl.Text = s.TopicReplacement
	tmpl.Setting = n.RouteByField // what a missing or unreadable column was named by
	// The template's column reference comes from route.by.field.
	for i, p := range tmpl.Parts {
		if p.Column != "" {
			tmpl.Parts[i].Column = s.RouteByField
		}
	}
	m.Topic = tmpl
	m.Key = Column{s.EventKey, n.EventKey}
	m.Payload = Column{s.EventPayload, n.EventPayload}
	m.Timestamp = Column{s.EventTimestamp, n.EventTimestamp}
	m.Headers = []Header{{Column: Column{s.EventID, n.EventID}, Header: "id"}}
	m.UUID = Column{s.EventID, n.EventID} // used only if it is a uuid column
	for item := range strings.SplitSeq(s.AdditionalPlace, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		f := strings.Split(item, ":")
		if len(f) < 2 || len(f) > 3 || f[0] == "" {
			return m, settingError(n.AdditionalPlace, "%q: want column:header or column:header:alias", item)
		}
		if f[1] != "header" {
			return m, settingError(n.AdditionalPlace, "%q: placement %q is not supported: the relay places columns in headers only (envelope would change the record value; partition is not supported)", item, f[1])
		}
		name := f[0]
		if len(f) == 3 && f[2] != "" {
			name = f[2]
		}
		if err := checkHeaderName(name); err != nil || name == "id" {
			if err == nil {
				err = fmt.Errorf("header \"id\" already carries the event id")
			}
			return m, settingError(n.AdditionalPlace, "%q: %v", item, err)
		}
		for _, h := range m.Headers {
			if h.Header == name {
				return m, settingError(n.AdditionalPlace, "header %q is given twice", name)
			}
		}
		m.Headers = append(m.Headers, Header{Column: Column{f[0], n.AdditionalPlace}, Header: name})
	}
	if s.TracingSpanColumn == "" {
		m.Tracing = Column{DebeziumTracingColumn, n.TracingSpanColumn}
		m.TracingIfPresent = true
	} else {
		m.Tracing = Column{s.TracingSpanColumn, n.TracingSpanColumn}
	}
	return m, nil
}

// Error is a mapping that does not fit the table: it names the setting
// and, when there is one, the column.
type Error struct {
	Setting string
	Column  string
	Problem string
}

func settingError(setting, format string, args ...any) error {
	return &Error{Setting: setting, Problem: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	if e.Column == "" {
		return e.Setting + ": " + e.Problem
	}
	return fmt.Sprintf("%s: column %q %s", e.Setting, e.Column, e.Problem)
}

// CustomSettings map a table of the application's own layout.
type CustomSettings struct {
	Table     string // schema.table
	Topic     string // template: text with {column} references
	Key       string // column; empty: no key
	Payload   string // column
	Timestamp string // column; empty: none
	Headers   string // column[:header],...
	Names     CustomSettingNames
}

// CustomSettingNames are the environment variables of CustomSettings.
type CustomSettingNames struct {
	Table, Topic, Key, Payload, Timestamp, Headers string
}

// Custom builds the mapping of a table of the application's own layout.
// Errors name the setting.
func Custom(s CustomSettings) (Mapping, error) {
	n := s.Names
	var m Mapping
	t, err := ParseTable(s.Table)
	if err != nil {
		return m, settingError(n.Table, "%v", err)
	}
	m.Table, m.TableSetting = t, n.Table
	if m.Topic, err = ParseTemplate(s.Topic, n.Topic); err != nil {
		return m, settingError(n.Topic, "%v", err)
	}
	if strings.TrimSpace(s.Payload) == "" {
		return m, settingError(n.Payload, "must name the payload column")
	}
	m.Key = Column{s.Key, n.Key}
	m.Payload = Column{s.Payload, n.Payload}
	m.Timestamp = Column{s.Timestamp, n.Timestamp}
	if m.Headers, err = ParseHeaders(s.Headers, n.Headers); err != nil {
		return m, settingError(n.Headers, "%v", err)
	}
	return m, nil
}
