package relay_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// A relay that freezes with a batch claimed must not hold the batch's rows,
// and the later rows of their keys, until the server notices its socket
// (never, for a frozen process): Postgres ends the batch's transaction
// after the stall bound, and another relay delivers the rows, in key order,
// while the first is still frozen. Here the frozen relay's claim blocks
// between locking its rows and its next statement.
func TestFrozenRelayLetsGoOfItsRows(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	brokers := relaytest.NewCluster(t, 3, "orders").ListenAddrs()
	var msgs []relaytest.Message
	for i := range 12 {
		msgs = append(msgs, relaytest.Message{Topic: "orders", Key: fmt.Appendf(nil, "k%d", i%3), Payload: fmt.Appendf(nil, "%d", i)})
	}
	db.Insert(t, msgs...)

	// A stall bound of 2 × 250ms + the topic check's 5s + 2 × 50ms.
	cfg := relay.Config{Schema: db.Schema, BatchTimeout: 250 * time.Millisecond, PollInterval: 50 * time.Millisecond}
	frozen := relay.New(cfg, db.Pool, relaytest.NewProducer(t, brokers), testLogger(t))
	locked, thaw := make(chan struct{}), make(chan struct{})
	var froze atomic.Bool
	frozen.SetAfterLock(func() {
		if froze.CompareAndSwap(false, true) {
			close(locked)
			<-thaw
		}
	})
	relaytest.RunRelay(t, frozen)
	t.Cleanup(func() {
		select {
		case <-thaw:
		default:
			close(thaw) // before the relay's stop
		}
	})
	<-locked
	frozeAt := time.Now()

	runRelay(t, db, brokers, relay.Config{PollInterval: 50 * time.Millisecond})
	relaytest.WaitFor(t, 30*time.Second, "another relay to send the frozen relay's rows", func() bool {
		return db.Count(t, "sent") == len(msgs)
	})
	if waited := time.Since(frozeAt); waited < 5*time.Second {
		t.Errorf("rows sent %v after the freeze, before the stall bound: the frozen relay held nothing?", waited)
	}
	records := relaytest.Consume(t, brokers, len(msgs), 10*time.Second, "orders")
	checkFirstDeliveryOrder(t, records)

	// Thawed, the relay finds its transaction gone and goes on.
	close(thaw)
	ids := db.Insert(t, relaytest.Message{Topic: "orders", Key: []byte("k0"), Payload: []byte("after")})
	relaytest.WaitFor(t, 10*time.Second, "the row inserted after the thaw to be sent", func() bool {
		return db.Count(t, "sent") == len(msgs)+len(ids)
	})
}

// A live relay's batch of many waves must stay within the stall bound
// however long its waves take together: it speaks up between waves, so
// Postgres does not end its transaction, and no row is produced twice.
// Here one key's 25 rows are one batch of 25 waves, each slowed to 400ms by
// the broker: 10s of waves against a stall bound of 9.1s (2 × 2s + 5s +
// 2 × 50ms), and each wave well within the batch timeout of 2s.
func TestSlowBatchOfManyWavesKeepsItsTransaction(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	cluster := relaytest.NewCluster(t, 1, "orders")
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		cluster.SleepControl(func() { time.Sleep(400 * time.Millisecond) }) // a slow broker
		return nil, nil, false
	})
	var msgs []relaytest.Message
	for i := range 25 {
		msgs = append(msgs, relaytest.Message{Topic: "orders", Key: []byte("hot"), Payload: fmt.Appendf(nil, "%d", i)})
	}
	db.Insert(t, msgs...)
	runRelay(t, db, cluster.ListenAddrs(), relay.Config{BatchTimeout: 2 * time.Second, PollInterval: 50 * time.Millisecond})

	relaytest.WaitFor(t, 60*time.Second, "every row sent", func() bool { return db.Count(t, "sent") == len(msgs) })
	records := relaytest.Consume(t, cluster.ListenAddrs(), len(msgs), 10*time.Second, "orders")
	if dups := checkFirstDeliveryOrder(t, records); dups > 0 {
		t.Errorf("%d rows produced twice: the batch's transaction was ended under it", dups)
	}
	var attempts int
	if err := db.Pool.QueryRow(context.Background(), `SELECT COALESCE(max(attempts), 0) FROM messages`).Scan(&attempts); err != nil {
		t.Fatal(err)
	}
	if attempts != 0 {
		t.Errorf("a row spent %d attempts", attempts)
	}
}
