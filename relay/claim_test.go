package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
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

// TestBatchesBehindHeldRowsAreBoundedInBytes checks the byte bound on the
// claim's fallback, the window that finds rows behind a page of held rows:
// it takes rows while the bytes before each are under the bound, each with
// its own payload, and the next batch takes the rest.
func TestBatchesBehindHeldRowsAreBoundedInBytes(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 1, "big").ListenAddrs()
	ctx := context.Background()

	const kb = 1 << 10
	var msgs []relaytest.Message
	for i := range 20 {
		msgs = append(msgs, relaytest.Message{Topic: "big", Key: []byte("hot"), Payload: fmt.Appendf(nil, "%d", i)})
	}
	hot := db.Insert(t, msgs...)
	// The head of the hot key waits for a retry an hour from now, so the
	// first page of 10 locked rows holds nothing that may go.
	if _, err := db.Pool.Exec(ctx, `UPDATE messages SET next_attempt_at = now() + interval '1 hour', attempts = 1 WHERE id = $1`, hot[0]); err != nil {
		t.Fatal(err)
	}
	var others []relaytest.Message
	for i := range 4 {
		others = append(others, relaytest.Message{Topic: "big", Key: fmt.Appendf(nil, "k%d", i), Payload: bytes.Repeat([]byte{'a' + byte(i)}, 100*kb),
			Headers: map[string]string{"row": strconv.Itoa(i)}})
	}
	others = append(others, relaytest.Message{Topic: "big", Key: []byte("small"), Payload: []byte("s")})
	ids := db.Insert(t, others...)

	r := relay.New(relay.Config{Schema: db.Schema, BatchSize: 10, BatchMaxBytes: 250 * kb}, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	// The bytes before the third 100 KB row are 200 KB, under the bound;
	// before the fourth, 300 KB. The next batch takes the fourth and the
	// small row.
	for i, want := range []int{3, 2} {
		n, err := r.DeliverBatch(ctx, nil)
		if err != nil || n != want {
			t.Fatalf("batch %d: %d rows, %v; want %d", i+1, n, err, want)
		}
	}
	records := relaytest.Consume(t, brokers, len(others), 10*time.Second, "big")
	for _, rec := range records {
		id := outboxID(t, rec)
		i := slices.Index(ids, id)
		if i < 0 {
			t.Fatalf("row %d of the hot key was delivered behind its waiting head", id)
		}
		if !bytes.Equal(rec.Value, others[i].Payload) {
			t.Errorf("row %d arrived with %d bytes, want its own %d", id, len(rec.Value), len(others[i].Payload))
		}
		if got, _ := relaytest.Header(rec, "row"); got != others[i].Headers["row"] {
			t.Errorf("row %d arrived with header row %q, want %q", id, got, others[i].Headers["row"])
		}
	}
	if got := db.Count(t, "pending"); got != len(hot) {
		t.Errorf("%d pending rows, want the %d rows of the held key", got, len(hot))
	}
}
