package relay

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/pgstore"
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

// row is one claimed outbox row (pgstore.Row).
type row = pgstore.Row

// record turns a row into a Kafka record (see row.record) and reports an
// application header that the relay's own replaced: a warning and
// outbox_relay_reserved_headers_replaced_total, so the clash is seen and
// fixed at the application, while delivery goes on.
func (r *Relay) record(x row) (*kgo.Record, error) {
	rec, replaced, err := buildRecord(x)
	for _, name := range replaced {
		r.logger.Warn("reserved_header_replaced", "outbox_id", x.ID, "topic", x.Topic, "header", name)
		r.cfg.Metrics.reservedHeaderReplaced(x.Topic)
	}
	return rec, err
}

// record turns a row into a Kafka record: outbox-id first, then outbox-uuid,
// then the application's headers by name. It fails only for rows that can
// never be produced as they are (headers that are not an object of
// strings). It returns the names of application headers it dropped because
// the relay sets a header of that name.
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
	return rec, replaced, nil
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

// expiredError is a row that must not be produced: its expires_at has
// passed, or comes before its deliver_after. It is escalated at once, with
// error_kind pgstore.ErrorKindExpired.
type expiredError struct{ reason string }

func (e expiredError) Error() string  { return e.reason }
func (e expiredError) RowFatal() bool { return true }

// expiry returns an expiredError when the row must not be produced.
func expiry(r row) error {
	const at = "2006-01-02T15:04:05.000Z07:00"
	switch {
	case r.ExpiresAt != nil && r.DeliverAfter != nil && r.ExpiresAt.Before(*r.DeliverAfter):
		return expiredError{fmt.Sprintf("expired: expires_at %s is before deliver_after %s, so the row could never be delivered in time; "+
			"requeue it (requeue clears expires_at) or discard it", r.ExpiresAt.UTC().Format(at), r.DeliverAfter.UTC().Format(at))}
	case r.Expired:
		return expiredError{fmt.Sprintf("expired: not delivered by its expires_at %s, and never produced late; "+
			"requeue it to deliver it anyway (requeue clears expires_at) or discard it", r.ExpiresAt.UTC().Format(at))}
	}
	return nil
}

// errorKind is what stuck_messages.error_kind says of f.
func (f failure) errorKind() string {
	if _, ok := errors.AsType[expiredError](f.err); ok {
		return pgstore.ErrorKindExpired
	}
	return f.kind.String()
}

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
