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
}

// record turns a row into a Kafka record. It fails only for rows that can
// never be produced as they are (headers that are not an object of strings).
func (r row) record() (*kgo.Record, error) {
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
func parseHeaders(raw []byte) ([]kgo.RecordHeader, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "{}" {
		return nil, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, fmt.Errorf("headers must be a JSON object of strings: %w", err)
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
			return nil, fmt.Errorf("header %q must be a JSON string, got %s", name, truncate(fields[name], 40))
		}
		out = append(out, kgo.RecordHeader{Key: name, Value: []byte(value)})
	}
	return out, nil
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}
