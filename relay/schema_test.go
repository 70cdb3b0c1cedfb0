package relay_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// A schema name of 60 characters is valid, and '<schema>_wakeup' would be
// 67: Postgres refuses such a NOTIFY channel, and with it the application's
// INSERT while a relay is idle. The channel is shortened instead, the same
// way on both sides: the insert goes in, its NOTIFY reaches the relay and
// the row is delivered without the fallback poll.
func TestLongSchemaNameIdleRelayInsertDelivered(t *testing.T) {
	t.Parallel()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "test_long_" + strings.Repeat("s", 38) + hex.EncodeToString(b[:])
	if len(schema) != 60 {
		t.Fatalf("schema name has %d characters, want 60", len(schema))
	}
	if err := relay.ValidSchema(schema); err != nil {
		t.Fatal(err)
	}
	if ch := relay.WakeupChannel(schema); len(ch) > 63 {
		t.Fatalf("wake-up channel %q has %d bytes, Postgres allows 63", ch, len(ch))
	}
	db := relaytest.NewDBWithSchema(t, schema)
	brokers := relaytest.NewCluster(t, 3, wakeupTopic).ListenAddrs()

	cfg, err := relay.PoolConfig(db.URL, db.Schema)
	if err != nil {
		t.Fatal(err)
	}
	app := "relay-long-" + hex.EncodeToString(b[:])
	cfg.ConnConfig.RuntimeParams["application_name"] = app
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	startWakeupOnlyRelay(t, pool, brokers, db.Schema)
	consumer := newWakeupConsumer(t, brokers)
	waitListening(t, db, app)

	for i := 1; i <= 2; i++ {
		// Registered idle: the trigger's WHEN is true and the insert
		// runs pg_notify on the derived channel.
		waitIdle(t, db)
		var id int64
		err := db.Pool.QueryRow(context.Background(),
			`INSERT INTO messages (topic, key, payload) VALUES ($1, 'k', 'p') RETURNING id`, wakeupTopic).Scan(&id)
		if err != nil {
			t.Fatalf("application insert into schema %s while a relay is idle: %v", schema, err)
		}
		waitDelivered(t, consumer, id)
		waitSent(t, db, i)
	}
}

// Every valid schema name gives a channel Postgres accepts, distinct for
// names that differ only past the 47th character.
func TestWakeupChannelFitsEveryValidSchema(t *testing.T) {
	t.Parallel()
	for n := 1; n <= 63; n++ {
		name := strings.Repeat("a", n)
		ch := relay.WakeupChannel(name)
		if len(ch) > 63 {
			t.Errorf("schema of %d characters: channel %q has %d bytes", n, ch, len(ch))
		}
		if n <= 56 && ch != name+"_wakeup" {
			t.Errorf("schema of %d characters: channel %q, want %s_wakeup", n, ch, name)
		}
	}
	a, b := strings.Repeat("a", 62)+"1", strings.Repeat("a", 62)+"2"
	if relay.WakeupChannel(a) == relay.WakeupChannel(b) {
		t.Errorf("schemas %s and %s share the channel %s", a, b, relay.WakeupChannel(a))
	}
}
