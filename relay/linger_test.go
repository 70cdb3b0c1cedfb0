package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// TestClaimLingerGathersATrickleIntoOneBatch: after a claim that did not
// fill its batch, the next claim waits for the linger, so rows committed
// one by one meanwhile go out as one batch (one mark, one sent_at), no
// sooner than the linger after the first row's claim.
func TestClaimLingerGathersATrickleIntoOneBatch(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	const topic = "linger"
	brokers := relaytest.NewCluster(t, 1, topic).ListenAddrs()
	const linger = 2 * time.Second
	cfg := relay.Config{Schema: db.Schema, ClaimLinger: linger, PollInterval: 100 * time.Millisecond}
	relaytest.RunRelay(t, relay.New(cfg, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t)))

	msg := func(i int) relaytest.Message {
		return relaytest.Message{Topic: topic, Key: []byte("k"), Payload: fmt.Appendf(nil, "%d", i)}
	}
	inserted := time.Now()
	first := db.Insert(t, msg(0))[0]
	relaytest.WaitFor(t, 10*time.Second, "the first row sent", func() bool { return db.Count(t, "sent") == 1 })
	var later []int64
	for i := 1; i <= 4; i++ {
		later = append(later, db.Insert(t, msg(i))[0]) // a transaction each
	}
	// The first row's claim came after its insert, so the next claim is
	// due no sooner than inserted+linger: the four rows must all be
	// committed before then for the test to mean anything.
	if since := time.Since(inserted); since >= linger {
		t.Fatalf("the machine is too slow for this test: the rows took %v to commit, the linger is %v", since, linger)
	}
	relaytest.WaitFor(t, 10*time.Second, "every row sent", func() bool { return db.Count(t, "sent") == 5 })

	var batches int
	var afterS float64
	err := db.Pool.QueryRow(context.Background(), `
SELECT count(DISTINCT sent_at), extract(epoch FROM min(sent_at) - (SELECT created_at FROM messages WHERE id = $1))
FROM messages WHERE id = ANY($2)`, first, later).Scan(&batches, &afterS)
	if err != nil {
		t.Fatal(err)
	}
	if batches != 1 {
		t.Errorf("the four rows committed during the linger went out in %d batches, want 1", batches)
	}
	// The first claim may have begun a moment before the first row's
	// transaction committed (it found the row once its snapshot was
	// taken), hence the margin; without the linger the second batch
	// follows within milliseconds.
	const margin = 500 * time.Millisecond
	if after := time.Duration(afterS * float64(time.Second)); after < linger-margin {
		t.Errorf("the second batch was marked %v after the first row was inserted, want about the linger (%v) or more", after, linger)
	}
}
