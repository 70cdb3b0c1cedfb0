package relay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// HeaderOutboxID names the header that carries the row id as decimal text, so
// consumers can drop the duplicates at-least-once delivery allows.
const HeaderOutboxID = "outbox-id"

// row is one claimed outbox row.
type row struct {
	ID        int64
	Topic     string
	Key       []byte // nil: no key
	Payload   []byte // nil: tombstone
	Headers   []byte // raw jsonb text
	Attempts  int
	CreatedAt time.Time
	Wave      int // place in its key's chain in the batch: 1 for the key's first row and for rows without a key
}

// record turns a row into a Kafka record. It fails only for rows that can
// never be produced as they are (headers that are not an object of strings).
func (r row) record() (*kgo.Record, error) {
	if err := validTopic(r.Topic); err != nil {
		return nil, err
	}
	headers, err := parseHeaders(r.Headers)
	if err != nil {
		return nil, err
	}
	rec := &kgo.Record{
		Topic:   r.Topic,
		Key:     r.Key,
		Value:   r.Payload,
		Headers: make([]kgo.RecordHeader, 0, len(headers)+1),
	}
	rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: HeaderOutboxID, Value: []byte(strconv.FormatInt(r.ID, 10))})
	rec.Headers = append(rec.Headers, headers...)
	return rec, nil
}

// parseHeaders reads a jsonb object of string → string into record headers,
// sorted by name so a row always produces the same record. An "outbox-id"
// entry is dropped: the relay's own header is the one consumers rely on.
// badRowError is a row that can never be produced as it is. It implements
// retry.RowFatalError, so the row is escalated at once with this reason.
type badRowError struct{ reason string }

func (e badRowError) Error() string  { return e.reason }
func (e badRowError) RowFatal() bool { return true }

func badRow(format string, args ...any) error {
	return badRowError{fmt.Sprintf(format, args...)}
}

// validTopic applies Kafka's own rule for topic names, so a bad name is
// escalated with a clear reason instead of failing in the client.
func validTopic(topic string) error {
	switch {
	case topic == "" || topic == "." || topic == "..":
		return badRow("invalid topic %q: a topic name cannot be empty, \".\" or \"..\"", topic)
	case len(topic) > 249:
		return badRow("invalid topic %.40q…: %d characters, Kafka allows at most 249", topic, len(topic))
	}
	for _, c := range topic {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return badRow("invalid topic %q: Kafka allows only ASCII letters, digits, '.', '_' and '-'", topic)
		}
	}
	return nil
}

func parseHeaders(raw []byte) ([]kgo.RecordHeader, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "{}" {
		return nil, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, badRow("headers must be a JSON object of strings: %v", err)
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		if name != HeaderOutboxID {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	out := make([]kgo.RecordHeader, 0, len(names))
	for _, name := range names {
		var value string
		if err := json.Unmarshal(fields[name], &value); err != nil {
			return nil, badRow("header %q must be a JSON string, got %s", name, jsonKind(fields[name]))
		}
		out = append(out, kgo.RecordHeader{Key: name, Value: []byte(value)})
	}
	return out, nil
}

// jsonKind names the type of a JSON value, for error messages that must not
// quote header contents.
func jsonKind(v json.RawMessage) string {
	v = bytes.TrimSpace(v)
	if len(v) == 0 {
		return "nothing"
	}
	switch v[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}
