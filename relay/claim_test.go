package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/relay/relaytest"
)

// TestBatchesAreBoundedInBytes checks RELAY_BATCH_MAX_BYTES: a batch takes
// rows while the bytes before each are under the bound, a row larger than
// the bound goes alone, and the rows left out are delivered by the next
// batches, in order.
func TestBatchesAreBoundedInBytes(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 1, "big").ListenAddrs()
	ctx := context.Background()

	const kb = 1 << 10
	var msgs []relaytest.Message
	for i := range 6 {
		msgs = append(msgs, relaytest.Message{Topic: "big", Key: fmt.Appendf(nil, "k%d", i%2), Payload: bytes.Repeat([]byte{'a' + byte(i)}, 100*kb)})
	}
	// Then a row larger than the bound, and a small one behind it.
	msgs = append(msgs,
		relaytest.Message{Topic: "big", Key: []byte("huge"), Payload: bytes.Repeat([]byte{'h'}, 300*kb)},
		relaytest.Message{Topic: "big", Key: []byte("small"), Payload: []byte("s")})
	db.Insert(t, msgs...)

	r := relay.New(relay.Config{Schema: db.Schema, BatchMaxBytes: 250 * kb}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	// Rows of 100 KB: the bytes before the third are 200 KB, under the
	// bound; before the fourth, 300 KB. Then the large row goes alone (the
	// bytes before it are none), and the small one after it.
	for i, want := range []int{3, 3, 1, 1} {
		n, err := r.DeliverBatch(ctx, nil)
		if err != nil || n != want {
			t.Fatalf("batch %d: %d rows, %v; want %d", i+1, n, err, want)
		}
	}
	if n, err := r.DeliverBatch(ctx, nil); err != nil || n != 0 {
		t.Fatalf("after the last batch: %d rows, %v; want none left", n, err)
	}
	records := relaytest.Consume(t, brokers, len(msgs), 10*time.Second, "big")
	checkFirstDeliveryOrder(t, records)
	for _, rec := range records {
		if id := outboxID(t, rec); !bytes.Equal(rec.Value, msgs[id-1].Payload) {
			t.Errorf("row %d arrived with %d bytes, want its own %d", id, len(rec.Value), len(msgs[id-1].Payload))
		}
	}
}

// TestClaimReadsABoundedWindow checks that a claim reads a bounded number
// of rows however many pending rows the keys in flight hold back: with
// 20,000 pending rows of 4 keys, all in flight, the claim that follows
// (claimHeadQuery, as the pipelined loop sends it) reads at most 10 times
// its batch of messages rows, and locks none.
func TestClaimReadsABoundedWindow(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `
INSERT INTO messages (topic, key, payload)
SELECT 't', convert_to('k' || (i % 4), 'UTF8'), 'p' FROM generate_series(1, 20000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `ANALYZE messages`); err != nil {
		t.Fatal(err)
	}
	const batch, window = 100, 250 // window: as Relay.firstWindow for a batch of 100, two in flight
	topics := []string{"t", "t", "t", "t"}
	keys := [][]byte{[]byte("k0"), []byte("k1"), []byte("k2"), []byte("k3")}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var plan []byte
	if err := tx.QueryRow(ctx, "EXPLAIN (ANALYZE, FORMAT JSON) "+relay.ClaimHeadQuery,
		batch, topics, keys, nil, false, window, int64(1<<30)).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	var root []struct{ Plan planNode }
	if err := json.Unmarshal(plan, &root); err != nil {
		t.Fatal(err)
	}
	read := root[0].Plan.rowsRead("messages")
	t.Logf("the claim read %d rows of messages for a batch of %d", read, batch)
	if read > 10*batch {
		t.Errorf("the claim read %d rows of messages for a batch of %d: more than 10 times its batch\n%s", read, batch, plan)
	}
	if locked := root[0].Plan.ActualRows; locked != 0 {
		t.Errorf("the claim returned %v rows; every key is in flight", locked)
	}
}

// planNode is a node of EXPLAIN (FORMAT JSON).
type planNode struct {
	NodeType      string     `json:"Node Type"`
	Relation      string     `json:"Relation Name"`
	ActualRows    float64    `json:"Actual Rows"`
	ActualLoops   float64    `json:"Actual Loops"`
	RemovedFilter float64    `json:"Rows Removed by Filter"`
	RemovedIndex  float64    `json:"Rows Removed by Index Recheck"`
	Plans         []planNode `json:"Plans"`
}

// rowsRead sums the rows the plan's scans of relation returned or
// filtered out.
func (n planNode) rowsRead(relation string) int {
	total := 0.0
	if n.Relation == relation {
		total += (n.ActualRows + n.RemovedFilter + n.RemovedIndex) * n.ActualLoops
	}
	for _, c := range n.Plans {
		total += float64(c.rowsRead(relation))
	}
	return int(total)
}
