package relaytest

import (
	"bytes"
	"cmp"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/readback"
	"github.com/outboxrelay/relay/relay"
)

// OutboxID is the row id a record carries in its outbox-id header.
func OutboxID(r *kgo.Record) (int64, error) { return readback.OutboxID(r) }

// Problems reports the failures of a check through t.Errorf: the first
// Max in full, then only their number (Done), so that a broken run of
// thousands of rows does not bury its first problem.
type Problems struct {
	t   testing.TB
	max int
	n   int
}

// NewProblems returns a Problems that reports at most max failures in full.
func NewProblems(t testing.TB, max int) *Problems {
	return &Problems{t: t, max: max}
}

// Errorf reports one failure.
func (p *Problems) Errorf(format string, args ...any) {
	p.t.Helper()
	if p.n++; p.n <= p.max {
		p.t.Errorf(format, args...)
	}
}

// Done reports how many failures were not shown.
func (p *Problems) Done() {
	p.t.Helper()
	if p.n > p.max {
		p.t.Errorf("... and %d more problems", p.n-p.max)
	}
}

// Position is where a record sits in Kafka.
type Position struct {
	Topic     string
	Partition int32
	Offset    int64
}

// Delivery is what CheckRecords learnt from the records.
type Delivery struct {
	// Deliveries counts the records of each row, by id.
	Deliveries map[int64]int
	// Duplicates counts the records of rows delivered before.
	Duplicates int
	// At is every record, by position.
	At map[Position]*kgo.Record
}

// CheckRecords checks the records of a test's topics against the rows the
// test committed, the guarantees consumers rely on:
//
//   - every record is a row, intact: its outbox-id names a row, and its
//     topic, key, payload and headers are the row's (NULL key and payload
//     stay null), so every duplicate is a copy of its original;
//   - for each topic and key, the first delivery of each row happens in id
//     order, and the key stays in one partition.
//
// It reports each failure to p and returns what it saw, for the checks that
// differ between callers: whether duplicates are allowed, and whether an
// undelivered row may be in stuck_messages instead.
func CheckRecords(p *Problems, rows map[int64]Message, recs []*kgo.Record) Delivery {
	p.t.Helper()
	recs = slices.Clone(recs)
	slices.SortFunc(recs, func(a, b *kgo.Record) int {
		return cmp.Or(cmp.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.Offset, b.Offset))
	})
	c := readback.NewChecker()
	c.Errorf = p.Errorf
	d := Delivery{At: map[Position]*kgo.Record{}}
	for _, r := range recs {
		d.At[Position{r.Topic, r.Partition, r.Offset}] = r
		id, err := OutboxID(r)
		if err != nil {
			p.Errorf("%v", err)
			continue
		}
		m, ok := rows[id]
		if !ok {
			p.Errorf("record %s/%d@%d carries outbox-id %d, which is no committed row", r.Topic, r.Partition, r.Offset, id)
			continue
		}
		checkContent(p, id, r, m)
		c.Add(id, m.Topic, m.Key, r.Partition)
	}
	d.Deliveries, d.Duplicates = c.Deliveries, c.Duplicates
	return d
}

// checkContent checks that r, the record of row id, carries m intact.
func checkContent(p *Problems, id int64, r *kgo.Record, m Message) {
	p.t.Helper()
	if r.Topic != m.Topic || !bytes.Equal(r.Key, m.Key) || (r.Key == nil) != (m.Key == nil) ||
		!bytes.Equal(r.Value, m.Payload) || (r.Value == nil) != (m.Payload == nil) {
		p.Errorf("record %s/%d@%d (outbox-id %d) is topic %q key %q value %q, want the row's %q %q %q",
			r.Topic, r.Partition, r.Offset, id, r.Topic, r.Key, r.Value, m.Topic, m.Key, m.Payload)
	}
	// The relay's own two, outbox-id and outbox-uuid, and the row's.
	if len(r.Headers) != len(m.Headers)+2 {
		p.Errorf("record of row %d has %d headers, want %d", id, len(r.Headers), len(m.Headers)+2)
	}
	if u, ok := Header(r, relay.HeaderOutboxUUID); !ok || len(u) != 36 {
		p.Errorf("record of row %d: outbox-uuid %q, want a UUID", id, u)
	}
	for k, v := range m.Headers {
		if got, ok := Header(r, k); !ok || got != v {
			p.Errorf("record of row %d: header %q = %q, want %q", id, k, got, v)
		}
	}
}
