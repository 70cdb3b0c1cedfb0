package relay_test

import (
	"context"
	"strings"
	"testing"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/relay/relaytest"
)

// kfake runs one broker, so every topic has replication factor 1: the
// preflight must flag it.
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
