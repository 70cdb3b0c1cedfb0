package relay_test

import (
	"bytes"
	"context"
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
