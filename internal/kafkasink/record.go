package kafkasink

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// HeaderOutboxID names the header that carries the row id as decimal text.
// It is unique within one database, but after an asynchronous failover or a
// point-in-time restore the identity can issue an id again for a different
// row: consumers dedup on HeaderOutboxUUID.
const HeaderOutboxID = "outbox-id"

// HeaderOutboxUUID names the header that carries the row's uuid column
// (random, set at INSERT) in its canonical text form. It identifies the row
// across failovers and restores, so consumers drop the duplicates that
// at-least-once delivery allows by it. Rows sent before migration 00002 have
// none.
const HeaderOutboxUUID = "outbox-uuid"

// reservedHeader tells whether an application header would clash with one
// the relay sets. The relay's value wins: consumers must be able to trust
// these headers to identify the row.
func reservedHeader(name string) bool { return name == HeaderOutboxID || name == HeaderOutboxUUID }

// recordOf turns a row into a Kafka record (see buildRecord) and reports
// an application header that the relay's own replaced: a warning and
// Options.HeaderReplaced (outbox_relay_reserved_headers_replaced_total), so
// the clash is seen and fixed at the application, while delivery goes on.
func (s *Sink) recordOf(x row) (*kgo.Record, error) {
	rec, replaced, err := buildRecord(x)
	for _, name := range replaced {
		s.logger.Warn("reserved_header_replaced", "outbox_id", x.ID, "topic", x.Topic, "header", name)
		if s.opts.HeaderReplaced != nil {
			s.opts.HeaderReplaced(x.Topic)
		}
	}
	return rec, err
}

// buildRecord turns a row into a Kafka record: the row's topic, key and
// payload; headers outbox-id first, then outbox-uuid, then the
// application's by name; and, when the row chose one, its partition (see
// withPartition); its timestamp is the row's (recordTime). It fails only for rows that can never be produced as they
// are: an invalid topic name, a negative partition, or headers that are not
// an object of strings. It returns the names of application headers it
// dropped because the relay sets a header of that name.
func buildRecord(r row) (*kgo.Record, []string, error) {
	if err := validTopic(r.Topic); err != nil {
		return nil, nil, err
	}
	headers, replaced, err := parseHeaders(r.Headers)
	if err != nil {
		return nil, nil, err
	}
	b := new(recordBuf)
	rec := &b.rec
	rec.Topic, rec.Key, rec.Value = r.Topic, r.Key, r.Payload
	rec.Headers = b.headers[:0]
	if len(headers) > 0 {
		rec.Headers = make([]kgo.RecordHeader, 0, len(headers)+2)
	}
	if r.Partition != nil {
		if *r.Partition < 0 {
			return nil, nil, badRow("partition %d is negative: Kafka numbers partitions from 0; fix the row's partition (or set it NULL to partition by key) and requeue it", *r.Partition)
		}
		rec.Context = withPartition(*r.Partition)
	}
	id := strconv.AppendInt(b.values[:0], r.ID, 10)
	rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: HeaderOutboxID, Value: id[:len(id):len(id)]})
	if r.UUID.Valid {
		uuid := appendUUID(b.values[len(id):len(id)], r.UUID.Bytes)
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: HeaderOutboxUUID, Value: uuid})
	}
	rec.Headers = append(rec.Headers, headers...)
	rec.Timestamp = recordTime(r, headers)
	return rec, replaced, nil
}

// HeaderTimestamp names the header in which a layout carries its mapped
// timestamp column, as decimal epoch milliseconds (layout.TimestampHeader).
const HeaderTimestamp = "outbox-timestamp"

// recordTime is the record's timestamp: the row's mapped timestamp (header
// HeaderTimestamp, when it holds epoch milliseconds), else its created_at,
// so consumers see when the event happened, not when the relay caught up
// with it. Zero (a row without created_at) leaves it to the client, which
// sets the time of the produce. The client must not measure its delivery
// timeout from it (see NewClient): a backlog's records would time out
// before they are sent.
func recordTime(r row, headers []kgo.RecordHeader) time.Time {
	for _, h := range headers {
		if h.Key != HeaderTimestamp {
			continue
		}
		if ms, err := strconv.ParseInt(string(h.Value), 10, 64); err == nil && ms >= 0 {
			return time.UnixMilli(ms)
		}
	}
	return r.CreatedAt
}

// recordBuf holds a record with room for the relay's own headers, so that
// a row without application headers becomes a record in one allocation
// instead of six: this runs for every row delivered.
type recordBuf struct {
	rec     kgo.Record
	headers [2]kgo.RecordHeader
	values  [20 + 36]byte // the id in decimal, the uuid in canonical form
}

// appendUUID appends u in its canonical text form (8-4-4-4-12 lower-case
// hex digits), as Postgres prints it.
func appendUUID(dst []byte, u [16]byte) []byte {
	dst = hex.AppendEncode(dst, u[0:4])
	for _, part := range [][]byte{u[4:6], u[6:8], u[8:10], u[10:16]} {
		dst = append(dst, '-')
		dst = hex.AppendEncode(dst, part)
	}
	return dst
}

// badRowError is a row that can never be produced as it is. It implements
// RowFatalError, so the row is escalated at once with this reason.
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

// parseHeaders reads a jsonb object of string → string into record headers,
// sorted by name so a row always produces the same record. Entries named
// like the relay's own headers (outbox-id, outbox-uuid) are left out and
// returned in replaced: the relay's values are the ones consumers rely on.
func parseHeaders(raw []byte) (headers []kgo.RecordHeader, replaced []string, err error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "{}" {
		return nil, nil, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, nil, badRow("headers must be a JSON object of strings: %v", err)
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		if reservedHeader(name) {
			replaced = append(replaced, name)
		} else {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	slices.Sort(replaced)
	out := make([]kgo.RecordHeader, 0, len(names))
	for _, name := range names {
		var value string
		if err := json.Unmarshal(fields[name], &value); err != nil {
			return nil, nil, badRow("header %q must be a JSON string, got %s", name, jsonKind(fields[name]))
		}
		out = append(out, kgo.RecordHeader{Key: name, Value: []byte(value)})
	}
	return out, replaced, nil
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

// batchSize is the encoded size of a record batch holding rec alone (v2
// format, uncompressed), the size the broker compares with the topic's
// max.message.bytes.
func batchSize(rec *kgo.Record) int {
	const batchHeader = 61
	body := 1 + 1 + 1 // attributes, timestamp delta 0, offset delta 0
	body += bytesSize(rec.Key) + bytesSize(rec.Value)
	body += varintSize(int64(len(rec.Headers)))
	for _, h := range rec.Headers {
		body += varintSize(int64(len(h.Key))) + len(h.Key) + bytesSize(h.Value)
	}
	return batchHeader + varintSize(int64(body)) + body
}

// bytesSize is the size of a length-prefixed byte field; nil is length -1.
func bytesSize(b []byte) int {
	if b == nil {
		return varintSize(-1)
	}
	return varintSize(int64(len(b))) + len(b)
}

func varintSize(v int64) int {
	return binary.PutVarint(make([]byte, binary.MaxVarintLen64), v)
}
