package relay_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// kfake runs one broker, so every topic has replication factor 1: the
// topic check must flag it.
func TestDurabilityWarnAlertsOnceAndProduces(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	ctx := context.Background()
	alerts := newRecordingAlerter()
	r := relay.New(relay.Config{Schema: db.Schema, Durability: relay.DurabilityWarn, Alerter: alerts}, db.Pool,
		relaytest.NewProducer(t, cluster.ListenAddrs()), testLogger(t))
	for i := 0; i < 2; i++ {
		db.Insert(t, relaytest.Message{Topic: "t", Payload: []byte("x")})
		if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 1 {
			t.Fatalf("batch %d: %d, %v", i, n, err)
		}
	}
	if got := db.Count(t, "sent"); got != 2 {
		t.Errorf("%d rows sent in warn mode, want 2", got)
	}
	if n := alerts.count(alert.KindDurability); n != 1 {
		t.Fatalf("%d durability alerts, want 1 (once per topic)", n)
	}
	a := <-alerts.raised
	if a.Topic != "t" || !strings.Contains(a.Message, "replication factor 1 < 3") {
		t.Errorf("alert %+v; want topic t and the replication factor", a)
	}
}

func TestDurabilityStrictEscalatesRowsOfUnsafeTopics(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	ctx := context.Background()
	id := db.Insert(t, relaytest.Message{Topic: "t", Key: []byte("k"), Payload: []byte("x")})[0]
	r := relay.New(relay.Config{Schema: db.Schema, Durability: relay.DurabilityStrict, Alerter: newRecordingAlerter()}, db.Pool,
		relaytest.NewProducer(t, cluster.ListenAddrs()), testLogger(t))
	if _, err := r.DeliverBatch(ctx, nil); err != nil {
		t.Fatal(err)
	}
	st := stuckRow(t, db, id)
	if st.kind != "row_fatal" || !strings.Contains(st.lastError, "not durable") || !strings.Contains(st.lastError, "replication factor 1 < 3") {
		t.Errorf("row of an unsafe topic in strict mode: %+v; want escalated with the reason", st)
	}
	// Nothing was produced.
	if n := relaytest.RecordsInTopics(t, cluster.ListenAddrs(), "t"); n != 0 {
		t.Errorf("%d records in t, want 0", n)
	}
}

// A topic whose max.message.bytes is below the client's default batch limit:
// the relay must keep the client's batches under it, and refuse a row that
// can never fit before it reaches a batch, so the broker never rejects a
// batch and its neighbours with it.
func TestRowsFitTheTopicsMaxMessageBytes(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1)
	brokers := cluster.ListenAddrs()
	ctx := context.Background()
	const limit = 100_000
	adm := kadm.NewClient(relaytest.NewProducer(t, brokers))
	if _, err := adm.CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": kadm.StringPtr(strconv.Itoa(limit))}, "small"); err != nil {
		t.Fatal(err)
	}

	// Twelve 30 kB rows of different keys: together far over the limit,
	// each well under it. One 150 kB row: over the topic's limit, under the
	// client's default. Random payloads, so compression cannot shrink them.
	var msgs []relaytest.Message
	for i := range 12 {
		msgs = append(msgs, relaytest.Message{Topic: "small", Key: fmt.Appendf(nil, "k%d", i), Payload: randomBytes(30_000)})
	}
	msgs = append(msgs, relaytest.Message{Topic: "small", Key: []byte("big"), Payload: randomBytes(150_000)})
	ids := db.Insert(t, msgs...)

	// Lingering makes the client gather the batch's records into as few
	// record batches as its limit allows.
	producer := relaytest.NewProducer(t, brokers, kgo.ProducerLinger(time.Second))
	r := relay.New(relay.Config{Schema: db.Schema, Alerter: newRecordingAlerter()}, db.Pool, producer, testLogger(t))
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != len(msgs) {
		t.Fatalf("batch: %d rows, %v; want %d", n, err, len(msgs))
	}
	if got := db.Count(t, "sent"); got != 12 {
		t.Errorf("%d rows sent, want the 12 that fit", got)
	}
	st := stuckRow(t, db, ids[12])
	if st.kind != "row_fatal" || st.attempts != 1 ||
		!strings.Contains(st.lastError, "max.message.bytes") || !strings.Contains(st.lastError, strconv.Itoa(limit)) {
		t.Errorf("oversize row: %+v; want escalated at once, naming the topic's max.message.bytes", st)
	}
	if n := relaytest.RecordsInTopics(t, brokers, "small"); n != 12 {
		t.Errorf("%d records in the topic, want 12", n)
	}
}

// After the first use, a topic's settings are read again in the background:
// a batch does not wait for the admin request, however long the broker
// takes to answer it.
func TestTopicRefreshDoesNotHoldBatches(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "t")
	ctx := context.Background()
	r := relay.New(relay.Config{Schema: db.Schema, Durability: relay.DurabilityWarn, Alerter: newRecordingAlerter()}, db.Pool,
		relaytest.NewProducer(t, cluster.ListenAddrs()), testLogger(t))
	db.Insert(t, relaytest.Message{Topic: "t", Payload: []byte("x")})
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 1 {
		t.Fatalf("first batch: %d, %v", n, err)
	}

	// From now on the broker holds every DescribeConfigs until release.
	release := make(chan struct{})
	held := make(chan struct{}, 1)
	cluster.ControlKey(int16(kmsg.DescribeConfigs), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		select {
		case held <- struct{}{}:
		default:
		}
		cluster.SleepControl(func() { <-release })
		return nil, nil, false
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})

	r.AgeTopicVerdict("t", relay.TopicRecheck)
	aged := r.TopicCheckedAt("t")
	db.Insert(t, relaytest.Message{Topic: "t", Payload: []byte("y")})
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 1 {
		t.Fatalf("batch with a refresh due: %d, %v", n, err)
	}
	if got := r.TopicCheckedAt("t"); !got.Equal(aged) {
		t.Fatalf("the batch waited for the refresh (checked %v, was %v)", got, aged)
	}
	select {
	case <-held: // the refresh is running: the broker holds its request
	case <-time.After(10 * time.Second):
		t.Fatal("no background refresh reached the broker")
	}
	close(release)
	r.WaitTopicRefreshes()
	if got := r.TopicCheckedAt("t"); !got.After(aged) {
		t.Errorf("the background refresh did not record a check (checked %v)", got)
	}
	if got := db.Count(t, "sent"); got != 2 {
		t.Errorf("%d rows sent, want 2", got)
	}
}

// A batch that is the first to use several topics checks their settings
// all at once: it waits for one check, not one per topic, so that even
// behind a broker that never answers admin requests the batch stays within
// the stall bound.
func TestFirstChecksOfABatchsTopicsRunAtOnce(t *testing.T) {
	t.Parallel()
	topics := []string{"a", "b", "c"}
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, topics...)
	r := relay.New(relay.Config{Schema: db.Schema}, db.Pool, relaytest.NewProducer(t, cluster.ListenAddrs()), testLogger(t))
	var mu sync.Mutex
	running, most := 0, 0
	all := make(chan struct{})
	r.SetBeforeTopicCheck(func(string) {
		mu.Lock()
		running++
		most = max(most, running)
		if running == len(topics) {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all: // every check has started
		case <-time.After(3 * time.Second): // checks one after another never all start
		}
		mu.Lock()
		running--
		mu.Unlock()
	})
	var msgs []relaytest.Message
	for _, topic := range topics {
		msgs = append(msgs, relaytest.Message{Topic: topic, Payload: []byte("x")})
	}
	db.Insert(t, msgs...)
	if n, err := r.DeliverBatch(context.Background(), nil); err != nil || n != len(topics) {
		t.Fatalf("batch: %d, %v", n, err)
	}
	if most != len(topics) {
		t.Errorf("at most %d topic checks ran at once, want all %d of the batch's new topics", most, len(topics))
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// Topic names come from the rows: the relay keeps the settings of a
// bounded number of topics, forgetting those used least recently.
func TestTopicSettingsKeptAreBounded(t *testing.T) {
	t.Parallel()
	topics := []string{"a", "b", "c", "d", "e"}
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, topics...)
	r := relay.New(relay.Config{Schema: db.Schema, Alerter: newRecordingAlerter()}, db.Pool,
		relaytest.NewProducer(t, cluster.ListenAddrs()), testLogger(t))
	r.SetMaxTopics(3)
	for _, topic := range topics {
		db.Insert(t, relaytest.Message{Topic: topic, Payload: []byte("x")})
		if n, err := r.DeliverBatch(context.Background(), nil); err != nil || n != 1 {
			t.Fatalf("batch of %s: %d, %v", topic, n, err)
		}
		if got := r.TopicsKnown(); got > 3 {
			t.Fatalf("after topic %s the relay keeps %d topics' settings, want at most 3", topic, got)
		}
	}
	if got := db.Count(t, "sent"); got != len(topics) {
		t.Errorf("%d rows sent, want %d", got, len(topics))
	}
}
