package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// smallTopicHidingItsLimit creates topic "small" with max.message.bytes
// 4000 on a one-partition topic, then makes the broker refuse every
// DescribeConfigs, as a cluster whose ACLs do not let the relay read topic
// configs: the relay cannot know the limit.
func smallTopicHidingItsLimit(t *testing.T) (*kfake.Cluster, []string) {
	t.Helper()
	var deny atomic.Bool
	deny.Store(true)
	return smallTopic(t, &deny)
}

// smallTopic is smallTopicHidingItsLimit while deny is true.
func smallTopic(t *testing.T, deny *atomic.Bool) (*kfake.Cluster, []string) {
	t.Helper()
	cluster := relaytest.NewCluster(t, 1)
	brokers := cluster.ListenAddrs()
	adm := kadm.NewClient(relaytest.NewProducer(t, brokers))
	if _, err := adm.CreateTopic(context.Background(), 1, 1, map[string]*string{"max.message.bytes": kadm.StringPtr("4000")}, "small"); err != nil {
		t.Fatal(err)
	}
	cluster.ControlKey(int16(kmsg.DescribeConfigs), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if !deny.Load() {
			return nil, nil, false
		}
		req := kreq.(*kmsg.DescribeConfigsRequest)
		resp := req.ResponseKind().(*kmsg.DescribeConfigsResponse)
		for _, rr := range req.Resources {
			res := kmsg.NewDescribeConfigsResponseResource()
			res.ResourceType, res.ResourceName = rr.ResourceType, rr.ResourceName
			res.ErrorCode = kerr.TopicAuthorizationFailed.Code
			resp.Resources = append(resp.Resources, res)
		}
		return resp, nil, true
	})
	return cluster, brokers
}

// drainBatches runs batches until one claims nothing.
func drainBatches(t *testing.T, r *relay.Relay) {
	t.Helper()
	for i := 0; ; i++ {
		n, err := r.DeliverBatch(context.Background(), nil)
		if err != nil {
			t.Fatalf("batch %d: %v", i, err)
		}
		if n == 0 {
			return
		}
		if i > 100 {
			t.Fatal("the outbox did not drain in 100 batches")
		}
	}
}

// checkKeyOrder fails the test unless, for each key, the records' outbox
// ids are increasing.
func checkKeyOrder(t *testing.T, records []*kgo.Record) {
	t.Helper()
	last := map[string]int64{}
	for _, rec := range records {
		id := outboxID(t, rec)
		if prev, ok := last[string(rec.Key)]; ok && id < prev {
			t.Errorf("key %s: row %d delivered after row %d", rec.Key, id, prev)
		}
		last[string(rec.Key)] = id
	}
}

// One row too large for the topic among good ones, and the relay cannot
// read the topic's limit: the broker rejects the record batch that holds
// it, and with it every record of the partition. Only the large row may be
// escalated: the others are retried alone and delivered.
func TestRejectedBatchEscalatesOnlyTheRowTooLargeAlone(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	_, brokers := smallTopicHidingItsLimit(t)

	var msgs []relaytest.Message
	for i := range 19 {
		msgs = append(msgs, relaytest.Message{Topic: "small", Key: fmt.Appendf(nil, "k%d", i%5), Payload: randomBytes(150)})
		if i == 9 {
			msgs = append(msgs, relaytest.Message{Topic: "small", Key: []byte("big"), Payload: randomBytes(6000)})
		}
	}
	ids := db.Insert(t, msgs...)
	big := ids[10]

	// Lingering makes the client gather the records into one record batch.
	producer := relaytest.NewProducer(t, brokers, kgo.ProducerLinger(50*time.Millisecond))
	r := relay.New(relay.Config{Schema: db.Schema, MaxAttempts: 2, Alerter: newRecordingAlerter()}, db.Pool, producer, testLogger(t))
	drainBatches(t, r)

	var stuck []int64
	rows, err := db.Pool.Query(context.Background(), `SELECT id FROM stuck_messages ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		stuck = append(stuck, id)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if len(stuck) != 1 || stuck[0] != big {
		t.Fatalf("stuck rows %v; want only the 6 KB row %d", stuck, big)
	}
	st := stuckRow(t, db, big)
	if st.kind != "row_fatal" || !strings.Contains(st.lastError, "alone") || !strings.Contains(st.lastError, "max.message.bytes") {
		t.Errorf("6 KB row: %+v; want row_fatal, saying it was refused alone and naming max.message.bytes", st)
	}
	if got := db.Count(t, "sent"); got != 19 {
		t.Errorf("%d rows sent, want the 19 good ones", got)
	}
	records := relaytest.Consume(t, brokers, 19, 10*time.Second, "small")
	checkKeyOrder(t, records)
}

// Twenty rows, each well within the topic's limit, that the client batches
// past it: no row is at fault, none may be escalated, and each key's rows
// arrive in order.
func TestRejectedBatchOfRowsThatFitAloneIsDelivered(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	_, brokers := smallTopicHidingItsLimit(t)

	var msgs []relaytest.Message
	for i := range 20 {
		msgs = append(msgs, relaytest.Message{Topic: "small", Key: fmt.Appendf(nil, "k%d", i%10), Payload: randomBytes(600)})
	}
	db.Insert(t, msgs...)
	producer := relaytest.NewProducer(t, brokers, kgo.ProducerLinger(50*time.Millisecond))
	r := relay.New(relay.Config{Schema: db.Schema, MaxAttempts: 2, Alerter: newRecordingAlerter()}, db.Pool, producer, testLogger(t))
	drainBatches(t, r)

	var stuck int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM stuck_messages`).Scan(&stuck); err != nil {
		t.Fatal(err)
	}
	if stuck != 0 {
		t.Errorf("%d rows escalated, want none: each fits the topic alone", stuck)
	}
	if got := db.Count(t, "sent"); got != 20 {
		t.Errorf("%d rows sent, want 20", got)
	}
	var spent int
	if err := db.Pool.QueryRow(context.Background(), `SELECT coalesce(sum(attempts), 0) FROM messages`).Scan(&spent); err != nil {
		t.Fatal(err)
	}
	if spent != 0 {
		t.Errorf("%d attempts spent, want none: the rows were not at fault", spent)
	}
	records := relaytest.Consume(t, brokers, 20, 10*time.Second, "small")
	checkKeyOrder(t, records)
}

// The client reads a topic's batch limit once, when it first meets the
// topic. When the relay could read the limit only later, the client's
// batches stay larger than the topic takes: the relay must hand it the
// topic's records in groups within the limit, so that Kafka rejects none.
func TestLimitLearntAfterTheClientCachedItsOwnBoundsBatches(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	var deny atomic.Bool
	deny.Store(true)
	_, brokers := smallTopic(t, &deny)
	logs := &logCapture{}
	producer := relaytest.NewProducer(t, brokers, kgo.ProducerLinger(50*time.Millisecond))
	r := relay.New(relay.Config{Schema: db.Schema, MaxAttempts: 2, Alerter: newRecordingAlerter()}, db.Pool, producer, slog.New(logs))

	// First use: the check is denied, the client meets the topic and
	// keeps its default limit.
	db.Insert(t, relaytest.Message{Topic: "small", Key: []byte("first"), Payload: []byte("x")})
	drainBatches(t, r)
	// The permission is granted; the next use refreshes the check.
	deny.Store(false)
	r.AgeTopicVerdict("small", time.Hour)
	db.Insert(t, relaytest.Message{Topic: "small", Key: []byte("second"), Payload: []byte("x")})
	drainBatches(t, r)
	r.WaitTopicRefreshes()

	var msgs []relaytest.Message
	for i := range 20 {
		msgs = append(msgs, relaytest.Message{Topic: "small", Key: fmt.Appendf(nil, "k%d", i%10), Payload: randomBytes(600)})
	}
	db.Insert(t, msgs...)
	drainBatches(t, r)
	if got := db.Count(t, "sent"); got != 22 {
		t.Errorf("%d rows sent, want 22", got)
	}
	if l := logs.find("batch_rejected"); l != "" {
		t.Errorf("Kafka rejected a batch: %s; want the relay to keep the client's batches within the limit it learnt", l)
	}
	checkKeyOrder(t, relaytest.Consume(t, brokers, 22, 10*time.Second, "small"))
}
