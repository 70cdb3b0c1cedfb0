package relay_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/retry"
)

// producerEpoch identifies the idempotent producer session that wrote a
// record batch.
type producerEpoch struct {
	id    int64
	epoch int16
}

// swallowFirstSession makes the broker take, and never answer, every produce
// request that carries a batch of the first producer session it sees: the
// soak's stuck batch, whose request the client resends (pinned to its
// sequence and epoch) after each request timeout. Requests of any later
// session are handled normally. It returns the number of requests
// swallowed so far.
func swallowFirstSession(t *testing.T, cluster *kfake.Cluster) (swallowed func() int) {
	var mu sync.Mutex
	var first *producerEpoch
	n := 0
	cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		mu.Lock()
		defer mu.Unlock()
		for _, s := range produceSessions(t, req.(*kmsg.ProduceRequest)) {
			if first == nil {
				first = &s
			}
			if s == *first {
				n++
				return nil, nil, true // taken, never answered
			}
		}
		return nil, nil, false
	})
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}

// produceSessions reads the producer id and epoch of every batch in req.
func produceSessions(t *testing.T, req *kmsg.ProduceRequest) []producerEpoch {
	var out []producerEpoch
	for _, topic := range req.Topics {
		for _, p := range topic.Partitions {
			var b kmsg.RecordBatch
			if err := b.ReadFrom(p.Records); err != nil {
				t.Errorf("produce request: record batch: %v", err)
				continue
			}
			out = append(out, producerEpoch{b.ProducerID, b.ProducerEpoch})
		}
	}
	return out
}

// TestBatchGivesUpOnProduceNeverAnswered reproduces the soak's stuck batch:
// the broker takes the first batch's produce request and never answers it,
// however often the client resends it. The idempotent client never fails a
// record it may have written, so without a bound of the relay's own the
// batch waits forever and nothing else is delivered. With the bound the
// relay gives up on the batch after BatchTimeout, as an outage: the rows
// stay pending with no attempt spent, the client drops the records (and
// moves to a new producer epoch), and the next claim delivers them, in per
// key order.
func TestBatchGivesUpOnProduceNeverAnswered(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 3, "orders")
	brokers := cluster.ListenAddrs()
	swallowed := swallowFirstSession(t, cluster)

	// Three keys, four rows each, interleaved: the first batch holds the
	// head row of each key, the later rows wait for it.
	var msgs []relaytest.Message
	for i := range 12 {
		msgs = append(msgs, relaytest.Message{Topic: "orders", Key: fmt.Appendf(nil, "k%d", i%3), Payload: fmt.Appendf(nil, "%d", i)})
	}
	db.Insert(t, msgs...)
	runRelay(t, db, brokers, relay.Config{
		BatchTimeout: 2 * time.Second,
		Retry:        retry.Policy{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond},
	})

	relaytest.WaitFor(t, 30*time.Second, "every row sent", func() bool { return db.Count(t, "sent") == len(msgs) })
	if swallowed() == 0 {
		t.Fatal("no produce request was swallowed: the test did not exercise the stuck batch")
	}
	records := relaytest.Consume(t, brokers, len(msgs), 10*time.Second, "orders")
	checkFirstDeliveryOrder(t, records)
	var attempts int
	if err := db.Pool.QueryRow(context.Background(), `SELECT COALESCE(max(attempts), 0) FROM messages`).Scan(&attempts); err != nil {
		t.Fatal(err)
	}
	if attempts != 0 {
		t.Errorf("a row spent %d attempts: giving up on a batch is an outage, not a row failure", attempts)
	}
	var stuck int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM stuck_messages`).Scan(&stuck); err != nil {
		t.Fatal(err)
	}
	if stuck != 0 {
		t.Errorf("%d rows escalated", stuck)
	}
}

// A produce the broker takes and never answers ends at the produce timeout
// (each record's own deadline), not at the batch timeout, and is an outage:
// the rows stay pending with no attempt spent and the error says which
// timeout passed. The next batch, in a new producer session, delivers them.
// The client's old delivery timeout (kgo.RecordDeliveryTimeout) never
// failed a request already written: the batch waited for the client's
// request timeout (its 10s produce request timeout + 10s overhead) or the
// batch timeout, whichever came first.
func TestProduceNeverAnsweredEndsAtTheProduceTimeout(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "orders")
	brokers := cluster.ListenAddrs()
	swallowed := swallowFirstSession(t, cluster)
	ids := db.Insert(t,
		relaytest.Message{Topic: "orders", Key: []byte("a"), Payload: []byte("1")},
		relaytest.Message{Topic: "orders", Key: []byte("b"), Payload: []byte("2")})

	const produceTimeout, batchTimeout = time.Second, time.Minute
	cfg := relay.Config{Schema: db.Schema, ProduceTimeout: produceTimeout, BatchTimeout: batchTimeout}
	r := relay.New(cfg, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	ctx := context.Background()
	start := time.Now()
	_, err := r.DeliverBatch(ctx, nil)
	took := time.Since(start)
	if swallowed() == 0 {
		t.Fatal("no produce request was swallowed: the test proves nothing")
	}
	if err == nil || !strings.Contains(err.Error(), "within the produce timeout") {
		t.Errorf("batch the broker never answered: error %v, want the produce timeout named", err)
	}
	if took >= 10*produceTimeout {
		t.Errorf("batch the broker never answered took %v, want about the produce timeout (%v), not the client's request timeout (20s) nor the batch timeout (%v)",
			took, produceTimeout, batchTimeout)
	}
	for _, id := range ids {
		if st := state(t, db, id); st.status != "pending" || st.attempts != 0 {
			t.Errorf("row %d after the unanswered produce: %+v, want pending with no attempt spent", id, st)
		}
	}
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != len(ids) || db.Count(t, "sent") != len(ids) {
		t.Errorf("the next batch: %d rows, %v, %d sent; want all delivered", n, err, db.Count(t, "sent"))
	}
}
