package relay_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// The relay's claim relies on READ COMMITTED: each statement of a batch sees
// what committed before it, and a row another relay updated since the
// batch began is skipped or re-read, not an error. A database or role whose
// default_transaction_isolation is 'repeatable read' must not change that:
// under it, a claim that meets a row another relay marked sent after its
// snapshot fails with "could not serialize access due to concurrent
// update". The pools the relay builds (PoolConfig) pin their sessions to
// READ COMMITTED. Here the relays log in as a role of the test's own whose
// default is repeatable read, and four of them drain one outbox at once.
func TestClaimsUnderRepeatableReadDefault(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	role := createRole(t, db, "rr")
	s := pgx.Identifier{db.Schema}.Sanitize()
	for _, stmt := range []string{
		"ALTER ROLE " + role + " LOGIN",
		"ALTER ROLE " + role + " SET default_transaction_isolation = 'repeatable read'",
		"GRANT USAGE ON SCHEMA " + s + " TO " + role,
		"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA " + s + " TO " + role,
		"GRANT SELECT, UPDATE ON SEQUENCE " + s + ".relay_idle_until TO " + role,
	} {
		if _, err := db.Pool.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	cfg, err := relay.PoolConfig(u.String(), db.Schema)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	// The role's default is in force for a plain session of it ...
	plain, err := pgx.Connect(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	var level string
	if err := plain.QueryRow(ctx, "SHOW transaction_isolation").Scan(&level); err != nil || level != "repeatable read" {
		t.Fatalf("the role's own sessions run %q (%v), want repeatable read: the test does not test anything", level, err)
	}
	_ = plain.Close(ctx)
	// ... and not for the relay's.
	if err := pool.QueryRow(ctx, "SHOW transaction_isolation").Scan(&level); err != nil || level != "read committed" {
		t.Errorf("the relay's sessions run %q (%v), want read committed", level, err)
	}

	const topic, rows, keys = "iso", 3000, 10
	brokers := relaytest.NewCluster(t, 3, topic).ListenAddrs()
	var msgs []relaytest.Message
	for i := range rows {
		msgs = append(msgs, relaytest.Message{Topic: topic, Key: fmt.Appendf(nil, "k%d", i%keys), Payload: []byte("p")})
	}
	db.Insert(t, msgs...)

	var (
		mu     sync.Mutex
		failed []error
		wg     sync.WaitGroup
	)
	deadline := time.Now().Add(time.Minute)
	for range 4 {
		r := relay.New(relay.Config{Schema: db.Schema, BatchSize: 40, Alerter: newRecordingAlerter()}, pool,
			relaytest.NewProducer(t, brokers), testLogger(t))
		wg.Go(func() {
			for time.Now().Before(deadline) {
				n, err := r.DeliverBatch(ctx, nil)
				if err != nil {
					mu.Lock()
					failed = append(failed, err)
					mu.Unlock()
					continue
				}
				if n == 0 && db.Count(t, "pending") == 0 {
					return
				}
			}
		})
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Errorf("%d batches failed, the first: %v", len(failed), errors.Join(failed[:min(3, len(failed))]...))
	}
	if got := db.Count(t, "sent"); got != rows {
		t.Errorf("%d of %d rows sent", got, rows)
	}
}
