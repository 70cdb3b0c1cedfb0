package relay_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/relay/relaytest"
)

// TestClaimsNextBatchWhileKafkaAnswers checks the pipelining: while Kafka
// holds the first batch's produce, the relay claims the next batch, up to
// InFlightBatches of them.
func TestClaimsNextBatchWhileKafkaAnswers(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 3, "orders")

	// Hold every produce request until release is closed.
	release := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(release) }) }
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		cluster.SleepControl(func() { <-release })
		return nil, nil, false
	})

	const batch, inFlight = 5, 3
	var msgs []relaytest.Message
	for i := range batch * (inFlight + 1) {
		msgs = append(msgs, relaytest.Message{Topic: "orders", Key: fmt.Appendf(nil, "k%d", i), Payload: []byte("x")})
	}
	db.Insert(t, msgs...)
	runRelay(t, db, cluster.ListenAddrs(), relay.Config{BatchSize: batch, InFlightBatches: inFlight})
	t.Cleanup(open) // before the relay's stop: a failed test must not wait out the shutdown timeout

	// Rows another session cannot lock are claimed by the relay.
	locked := func() int {
		tx, err := db.Pool.Begin(context.Background())
		if err != nil {
			t.Fatalf("begin: %v", err)
		}
		defer func() { _ = tx.Rollback(context.Background()) }()
		var free int
		if err := tx.QueryRow(context.Background(),
			`SELECT count(*) FROM (SELECT 1 FROM messages WHERE status = 'pending' FOR UPDATE SKIP LOCKED) f`).Scan(&free); err != nil {
			t.Fatalf("count free rows: %v", err)
		}
		return len(msgs) - free
	}
	relaytest.WaitFor(t, 10*time.Second, "three batches claimed at once", func() bool { return locked() == batch*inFlight })
	if n := db.Count(t, "sent"); n != 0 {
		t.Fatalf("%d rows sent while Kafka held every produce", n)
	}
	open()
	relaytest.WaitFor(t, 10*time.Second, "all rows sent", func() bool { return db.Count(t, "sent") == len(msgs) })
}
