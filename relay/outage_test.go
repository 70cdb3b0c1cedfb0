package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/retry"
)

// attemptsSpent is the sum of the attempts of every row, pending, sent or
// stuck.
func attemptsSpent(t *testing.T, db *relaytest.DB) (spent, stuck int) {
	t.Helper()
	err := db.Pool.QueryRow(context.Background(),
		`SELECT (SELECT coalesce(sum(attempts), 0) FROM messages), (SELECT count(*) FROM stuck_messages)`).Scan(&spent, &stuck)
	if err != nil {
		t.Fatal(err)
	}
	return spent, stuck
}

// outageAlertFor waits for an outage alert naming topic, and returns it.
func outageAlertFor(t *testing.T, alerts *recordingAlerter, topic string, timeout time.Duration) alert.Alert {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case a := <-alerts.raised:
			if a.Kind == alert.KindOutage && a.Topic == topic {
				return a
			}
		case <-deadline:
			t.Fatalf("no outage alert for topic %s within %v", topic, timeout)
		}
	}
}

// One partition answers NOT_ENOUGH_REPLICAS while the others take records:
// an outage of that partition. Its rows must spend no attempt, whatever
// else their batch held, nothing may be escalated, the alert must name the
// topic and partition, and when the partition is back the rows drain in
// order. Driven batch by batch, with MaxAttempts 2 and a produce timeout
// short enough that each batch sees the partition fail.
func TestPartitionOutageSpendsNoAttempts(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 3, "t")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()
	fault := cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "t", Partitions: []int32{0}, Err: kerr.NotEnoughReplicas, Count: -1})

	// Each batch gets rows of every key, so the other partitions take
	// records in each batch while partition 0 fails its rows.
	var ids []int64
	write := func() {
		var msgs []relaytest.Message
		for i := range 12 {
			msgs = append(msgs, relaytest.Message{Topic: "t", Key: fmt.Appendf(nil, "k%d", i), Payload: fmt.Appendf(nil, "%d", len(ids)+i)})
		}
		ids = append(ids, db.Insert(t, msgs...)...)
	}
	policy := retry.Policy{Base: time.Minute, Max: time.Minute, Int64N: func(n int64) int64 { return n - 1 }}
	alerts := newRecordingAlerter()
	// A produce timeout of 1s, and metadata refreshed often enough that
	// the client fails the records at it.
	producer := relaytest.NewProducer(t, brokers, kgo.MetadataMinAge(250*time.Millisecond))
	r := relay.New(relay.Config{Schema: db.Schema, Retry: policy, MaxAttempts: 2, OutageAlertAfter: time.Millisecond, Alerter: alerts,
		ProduceTimeout: time.Second},
		db.Pool, producer, testLogger(t))

	now := time.Now().Truncate(time.Microsecond)
	for i := range 4 {
		write()
		at := now.Add(time.Duration(i) * time.Hour) // every retry is due
		if _, err := r.DeliverBatch(ctx, &at); err != nil {
			t.Fatalf("batch %d during the outage: %v", i, err)
		}
	}
	if spent, stuck := attemptsSpent(t, db); spent != 0 || stuck != 0 {
		t.Fatalf("during the partition's outage: %d attempts spent, %d rows escalated; want none", spent, stuck)
	}
	sent := db.Count(t, "sent")
	if sent == 0 || sent == len(ids) {
		t.Fatalf("%d of %d rows sent during the outage; want the other partitions' rows only", sent, len(ids))
	}
	a := outageAlertFor(t, alerts, "t", 5*time.Second)
	if !strings.Contains(a.Message, "partitions [0]") || !strings.Contains(a.Message, "topic t") {
		t.Errorf("outage alert %q; want it to name topic t and partition [0]", a.Message)
	}

	fault.Remove()
	for i := 0; db.Count(t, "sent") < len(ids); i++ {
		at := now.Add(time.Duration(10+i) * time.Hour)
		if _, err := r.DeliverBatch(ctx, &at); err != nil {
			t.Fatalf("batch %d after the outage: %v", i, err)
		}
		if i > 50 {
			t.Fatalf("%d of %d rows sent after 50 batches", db.Count(t, "sent"), len(ids))
		}
	}
	if spent, stuck := attemptsSpent(t, db); spent != 0 || stuck != 0 {
		t.Errorf("after the outage: %d attempts spent, %d rows escalated; want none", spent, stuck)
	}
	records := relaytest.Consume(t, brokers, len(ids), 10*time.Second, "t")
	onZero := 0
	for _, rec := range records {
		if rec.Partition == 0 {
			onZero++
		}
	}
	if onZero == 0 {
		t.Fatal("no key of the test landed on partition 0: the test proves nothing")
	}
	checkKeyOrder(t, records)
}

// The daemon, with one partition answering NOT_ENOUGH_REPLICAS for many
// produce timeouts (10 s against a 1 s produce timeout and a 2 s batch
// timeout: ten timeouts, where production's
// defaults would need five minutes; the client refreshes metadata every
// 250 ms, so it fails the partition's records at the produce timeout)
// while an application keeps writing to every partition. The other
// partitions' rows keep flowing; the failing partition's rows spend no
// attempt and nothing is escalated with RELAY_MAX_ATTEMPTS=2; once the
// partition is back every row is delivered, each key in order.
func TestPartitionOutageForManyProduceTimeoutsDrainsInOrder(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 3, "t")
	brokers := cluster.ListenAddrs()
	fault := cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "t", Partitions: []int32{0}, Err: kerr.NotEnoughReplicas, Count: -1})

	alerts := newRecordingAlerter()
	cfg := relay.Config{Schema: db.Schema, MaxAttempts: 2, ProduceTimeout: time.Second, BatchTimeout: 2 * time.Second, PollInterval: 50 * time.Millisecond,
		OutageAlertAfter: time.Second, Alerter: alerts,
		Retry: retry.Policy{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}}
	producer := relaytest.NewProducer(t, brokers, kgo.MetadataMinAge(250*time.Millisecond))
	stop := relaytest.RunRelay(t, relay.New(cfg, db.Pool, producer, testLogger(t)))
	defer stop()

	const span = 10 * time.Second
	end := time.After(span)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	written := 0
	for i := 0; ; i++ {
		select {
		case <-end:
		case <-tick.C:
			db.Insert(t,
				relaytest.Message{Topic: "t", Key: fmt.Appendf(nil, "k%d", i%12), Payload: fmt.Appendf(nil, "%d", i)},
				relaytest.Message{Topic: "t", Key: fmt.Appendf(nil, "k%d", (i+5)%12), Payload: fmt.Appendf(nil, "%d", i)})
			written += 2
			continue
		}
		break
	}
	// A quarter of the keys are on partition 0: the other partitions'
	// rows are delivered while it is still down (each when its batch ends,
	// which waits for the failing partition's rows up to a produce
	// timeout).
	relaytest.WaitFor(t, 30*time.Second, "half the rows sent while partition 0 is down", func() bool {
		return db.Count(t, "sent") >= written/2
	})
	sentDuring := db.Count(t, "sent")
	spent, stuck := attemptsSpent(t, db)
	if spent != 0 || stuck != 0 {
		t.Errorf("during the partition's outage: %d attempts spent, %d rows escalated; want none", spent, stuck)
	}
	a := outageAlertFor(t, alerts, "t", 5*time.Second)
	if !strings.Contains(a.Message, "partitions [0]") {
		t.Errorf("outage alert %q; want it to name partition [0]", a.Message)
	}

	fault.Remove()
	relaytest.WaitFor(t, 60*time.Second, "every row to be delivered after the outage", func() bool {
		return db.Count(t, "sent") == written
	})
	if spent, stuck := attemptsSpent(t, db); spent != 0 || stuck != 0 {
		t.Errorf("after the outage: %d attempts spent, %d rows escalated; want none", spent, stuck)
	}
	records := relaytest.Consume(t, brokers, written, 20*time.Second, "t")
	checkKeyOrder(t, records)
	t.Logf("%d rows written, %d sent during the outage", written, sentDuring)
}

// logCapture keeps the messages of the records a relay logs, with their
// attributes.
type logCapture struct {
	mu    sync.Mutex
	lines []string
}

func (c *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (c *logCapture) Handle(_ context.Context, rec slog.Record) error {
	var b bytes.Buffer
	b.WriteString(rec.Message)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	c.mu.Lock()
	c.lines = append(c.lines, b.String())
	c.mu.Unlock()
	return nil
}
func (c *logCapture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *logCapture) WithGroup(string) slog.Handler      { return c }

// find returns the first line starting with msg, or "".
func (c *logCapture) find(msg string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range c.lines {
		if strings.HasPrefix(l, msg+" ") {
			return l
		}
	}
	return ""
}

// refusingAddr is an address nothing listens on: connections are refused.
func refusingAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// With Kafka refusing connections, the relay logs it at once, with the
// cause, not one produce timeout (30 s by default) later.
func TestRefusedConnectionLogsAtOnceWithItsCause(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("v")})
	logs := &logCapture{}
	r := relay.New(relay.Config{Schema: db.Schema, Alerter: newRecordingAlerter(), ShutdownTimeout: 100 * time.Millisecond}, db.Pool,
		relaytest.NewProducer(t, []string{refusingAddr(t)}), slog.New(logs))
	stop := relaytest.RunRelay(t, r)
	defer stop()
	relaytest.WaitFor(t, 5*time.Second, "a kafka_connection_failed log line", func() bool {
		return logs.find("kafka_connection_failed") != ""
	})
	if l := logs.find("kafka_connection_failed"); !strings.Contains(l, "connection refused") {
		t.Errorf("log line %q; want the cause, connection refused", l)
	}
}

// The outage alert names the cause the client met, not only that Kafka
// did not answer.
func TestOutageAlertNamesTheCause(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("v")})
	alerts := newRecordingAlerter()
	r := relay.New(relay.Config{Schema: db.Schema, OutageAlertAfter: 300 * time.Millisecond, Alerter: alerts,
		ShutdownTimeout: 100 * time.Millisecond}, db.Pool,
		relaytest.NewProducer(t, []string{refusingAddr(t)}), testLogger(t))
	stop := relaytest.RunRelay(t, r)
	defer stop()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case a := <-alerts.raised:
			if a.Kind != alert.KindOutage {
				continue
			}
			if !strings.Contains(a.Message, "connection refused") {
				t.Errorf("outage alert %q; want the cause, connection refused", a.Message)
			}
			if h := r.KafkaHealthy(); h == nil || !strings.Contains(h.Error(), "connection refused") {
				t.Errorf("KafkaHealthy() = %v; want the cause, connection refused", h)
			}
			return
		case <-deadline:
			t.Fatal("no outage alert within 10s")
		}
	}
}

// INVALID_TIMESTAMP: a record's timestamp is its row's created_at, so the
// broker refusing one means the topic's timestamp bounds are tighter than
// the rows' age, or the database's clock is skewed. That is no row's fault:
// with MaxAttempts 2 nothing is escalated, no attempt is spent, the alert
// says bounds and clock, and the rows go once the broker takes them.
func TestInvalidTimestampIsClockSkewNotARowFault(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t", "u")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()
	fault := cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "t", Err: kerr.InvalidTimestamp, Count: -1})
	alerts := newRecordingAlerter()
	r := relay.New(relay.Config{Schema: db.Schema, MaxAttempts: 2, OutageAlertAfter: time.Millisecond, Alerter: alerts}, db.Pool,
		relaytest.NewProducer(t, brokers), testLogger(t))
	now := time.Now().Truncate(time.Microsecond)
	for i := range 3 {
		db.Insert(t,
			relaytest.Message{Topic: "t", Key: fmt.Appendf(nil, "k%d", i), Payload: []byte("x")},
			relaytest.Message{Topic: "u", Key: fmt.Appendf(nil, "k%d", i), Payload: []byte("x")})
		at := now.Add(time.Duration(i) * time.Hour)
		if _, err := r.DeliverBatch(ctx, &at); err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
	}
	if spent, stuck := attemptsSpent(t, db); spent != 0 || stuck != 0 {
		t.Fatalf("with the broker refusing timestamps: %d attempts spent, %d rows escalated; want none", spent, stuck)
	}
	if a := outageAlertFor(t, alerts, "t", 5*time.Second); !strings.Contains(a.Message, "clock") || !strings.Contains(a.Message, "message.timestamp.before.max.ms") {
		t.Errorf("alert %q; want it to name the clock and the topic's bounds", a.Message)
	}
	fault.Remove()
	at := now.Add(10 * time.Hour)
	if _, err := r.DeliverBatch(ctx, &at); err != nil {
		t.Fatal(err)
	}
	if got := db.Count(t, "sent"); got != 6 {
		t.Errorf("%d rows sent once the clock is right, want 6", got)
	}
}

// UNKNOWN_TOPIC_OR_PARTITION from a topic the relay has seen exist (its
// topic check found it) is a partition the broker does not have now: an
// outage of the partition, not a missing topic. With MaxAttempts 2 no row
// spends an attempt, and they go once the broker knows the partition again.
func TestUnknownPartitionOfAnExistingTopicIsAnOutage(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t", "u")
	brokers := cluster.ListenAddrs()
	ctx := context.Background()
	fault := cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "t", Err: kerr.UnknownTopicOrPartition, Count: -1})
	r := relay.New(relay.Config{Schema: db.Schema, MaxAttempts: 2, Alerter: newRecordingAlerter()}, db.Pool,
		relaytest.NewProducer(t, brokers, kgo.MetadataMinAge(250*time.Millisecond)), testLogger(t))
	now := time.Now().Truncate(time.Microsecond)
	for i := range 3 {
		db.Insert(t,
			relaytest.Message{Topic: "t", Key: fmt.Appendf(nil, "k%d", i), Payload: []byte("x")},
			relaytest.Message{Topic: "u", Key: fmt.Appendf(nil, "k%d", i), Payload: []byte("x")})
		at := now.Add(time.Duration(i) * time.Hour)
		if _, err := r.DeliverBatch(ctx, &at); err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
	}
	if spent, stuck := attemptsSpent(t, db); spent != 0 || stuck != 0 {
		t.Fatalf("with the broker not knowing t's partition: %d attempts spent, %d rows escalated; want none", spent, stuck)
	}
	fault.Remove()
	at := now.Add(10 * time.Hour)
	if _, err := r.DeliverBatch(ctx, &at); err != nil {
		t.Fatal(err)
	}
	if got := db.Count(t, "sent"); got != 6 {
		t.Errorf("%d rows sent once the partition is back, want 6", got)
	}
}
