package faults

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/relaytest"
)

// outcome is what a scenario did, for the invariant checker's report.
type outcome struct {
	db      *relaytest.DB
	brokers []string
	topics  []string
	// rows are the committed rows, by id (load.stop).
	rows map[int64]relaytest.Message
	// faults counts the faults injected; kinds names them.
	faults int
	kinds  string
	// rolledBack counts the application transactions that rolled back.
	rolledBack int64
	// badRows are ids the scenario made undeliverable on purpose: only
	// they may be escalated. Nil under pure infrastructure faults.
	badRows map[int64]bool
	// expired are rows written past their expires_at: they must be
	// escalated as expired. mayExpire may be sent or escalated as expired.
	expired, mayExpire map[int64]bool
	// drainTimeout bounds the wait for every row to leave pending.
	drainTimeout time.Duration
}

// checkInvariants waits until the relay has resolved every row, then
// checks the relay's guarantees against the outbox tables and every record
// of the topics, read from the beginning:
//
//   - every committed row is in Kafka at least once, or in stuck_messages
//     with a reason (and only rows the scenario made bad may be there);
//   - every row marked sent has its record at the recorded partition and
//     offset, carrying outbox-id = the row's id;
//   - what relaytest.CheckRecords checks, as the end-to-end tests do: for
//     each topic and key, the first occurrences of its rows are in id
//     order, and the key stays in one partition; every record is a
//     committed row, intact, so each duplicate carries the outbox-id, key
//     and payload of its original, and no rolled-back row reaches Kafka.
//
// It logs the scenario's figures and returns how many records were
// duplicates.
func checkInvariants(t *testing.T, o outcome) (duplicates int) {
	t.Helper()
	if t.Failed() {
		t.FailNow() // the relay died, or the scenario failed: no use waiting
	}
	ctx := context.Background()
	if o.drainTimeout == 0 {
		o.drainTimeout = 2 * time.Minute
		if soaking() {
			o.drainTimeout = 10 * time.Minute
		}
	}
	drainStart := time.Now()
	relaytest.WaitFor(t, o.drainTimeout, "every row sent or escalated", func() bool {
		var pending int
		if err := o.db.Pool.QueryRow(ctx, `SELECT count(*) FROM messages WHERE status = 'pending'`).Scan(&pending); err != nil {
			t.Fatalf("count pending: %v", err)
		}
		return pending == 0
	})
	drained := time.Since(drainStart)

	// The outbox's view: where each sent row landed, and the stuck rows.
	sentAt := map[int64]relaytest.Position{}
	rs, err := o.db.Pool.Query(ctx, `SELECT id, topic, kafka_partition, kafka_offset FROM messages WHERE status = 'sent'`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var id int64
		var p relaytest.Position
		if err := rs.Scan(&id, &p.Topic, &p.Partition, &p.Offset); err != nil {
			t.Fatal(err)
		}
		sentAt[id] = p
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	type stuckRow struct{ kind, reason string }
	stuck := map[int64]stuckRow{}
	rs, err = o.db.Pool.Query(ctx, `SELECT id, error_kind, last_error FROM stuck_messages`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var id int64
		var s stuckRow
		if err := rs.Scan(&id, &s.kind, &s.reason); err != nil {
			t.Fatal(err)
		}
		stuck[id] = s
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}

	recs := consumeAll(t, o.brokers, o.topics)
	problems := relaytest.NewProblems(t, 15)
	d := relaytest.CheckRecords(problems, o.rows, recs)
	fail := problems.Errorf

	lost, escalated, wronglyEscalated := 0, 0, 0
	if len(o.badRows) > 0 {
		t.Logf("the load wrote %d bad rows", len(o.badRows))
	}
	for id, m := range o.rows {
		s, isStuck := stuck[id]
		p, isSent := sentAt[id]
		switch {
		case isSent:
			r := d.At[p]
			if r == nil {
				fail("row %d is marked sent at %s/%d@%d, but Kafka has no record there", id, p.Topic, p.Partition, p.Offset)
			} else if got, err := relaytest.OutboxID(r); err != nil || got != id {
				fail("row %d is marked sent at %s/%d@%d, but the record there is outbox-id %d (%v)", id, p.Topic, p.Partition, p.Offset, got, err)
			}
		case isStuck && (o.expired[id] || o.mayExpire[id]):
			escalated++
			if s.kind != "expired" {
				fail("expiring row %d was escalated as %s (%s), want expired", id, s.kind, s.reason)
			}
		case isStuck:
			escalated++
			if s.reason == "" {
				fail("row %d is in stuck_messages without a reason", id)
			}
			if o.badRows[id] && s.kind != "row_fatal" {
				fail("bad row %d was escalated as %s (%s), want row_fatal", id, s.kind, s.reason)
			}
			if !o.badRows[id] {
				wronglyEscalated++
				fail("row %d (topic %s) was escalated (%s: %s) though nothing is wrong with it", id, m.Topic, s.kind, s.reason)
			}
		default:
			fail("row %d is neither sent nor in stuck_messages", id)
		}
		if (o.badRows[id] || o.expired[id]) && !isStuck {
			fail("bad or expired row %d was not escalated (sent: %v)", id, isSent)
		}
		if d.Deliveries[id] == 0 && !isStuck {
			lost++
			fail("row %d (topic %s, key %q) is lost: not in Kafka and not in stuck_messages", id, m.Topic, m.Key)
		}
	}
	if extra := len(sentAt) + len(stuck) - len(o.rows); extra != 0 {
		fail("the outbox holds %d sent and %d stuck rows for %d committed rows", len(sentAt), len(stuck), len(o.rows))
	}
	problems.Done()
	t.Logf("FIGURES %s: rows written %d (transactions rolled back %d), faults injected %d (%s), records in Kafka %d, duplicates %d, lost %d, escalated %d (wrongly %d), drained %v after the load",
		t.Name(), len(o.rows), o.rolledBack, o.faults, o.kinds, len(recs), d.Duplicates, lost, escalated, wronglyEscalated, drained.Round(time.Millisecond))
	if lost != 0 {
		t.Errorf("%d rows lost, want 0", lost)
	}
	return d.Duplicates
}

// check checks the invariants of o (checkInvariants), a load on brokers
// during which the scenario injected faults faults of kinds, and returns
// how many records were duplicates.
func (o outcome) check(t *testing.T, brokers []string, faults int, kinds string) int {
	t.Helper()
	o.brokers, o.faults, o.kinds = brokers, faults, kinds
	return checkInvariants(t, o)
}

// consumeAll reads every record of topics, from the start to the end
// offsets Kafka reports now.
func consumeAll(t *testing.T, brokers []string, topics []string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topics...)
	cl.Close()
	if err != nil {
		t.Fatalf("end offsets: %v", err)
	}
	want := map[string]map[int32]int64{}
	remaining := 0
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			t.Fatalf("end offset %s/%d: %v", o.Topic, o.Partition, o.Err)
		}
		if want[o.Topic] == nil {
			want[o.Topic] = map[int32]int64{}
		}
		want[o.Topic][o.Partition] = o.Offset
		if o.Offset > 0 {
			remaining++
		}
	})
	read := 0 // records counted against the end offsets
	return relaytest.ConsumeUntil(t, brokers, 2*time.Minute, "every partition read to its end", func(recs []*kgo.Record) bool {
		for _, r := range recs[read:] {
			if r.Offset == want[r.Topic][r.Partition]-1 {
				remaining--
			}
		}
		read = len(recs)
		return remaining == 0
	}, topics...)
}
