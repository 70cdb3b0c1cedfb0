package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/relay/relaytest"
)

// soakVar names the environment variable that lengthens every scenario.
const soakVar = "RELAY_SOAK"

// loadDuration is how long a scenario's load and fault loop runs: short by
// default, for CI, or RELAY_SOAK (a Go duration such as 10m) in soak mode.
func loadDuration(t *testing.T, short time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(soakVar)
	if v == "" {
		return short
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration such as 10m", soakVar, v)
	}
	return d
}

// soaking reports whether RELAY_SOAK is set.
func soaking() bool { return os.Getenv(soakVar) != "" }

// load is an application writing to the outbox: several writers, each
// committing multi-row transactions over its own keys (so each key's rows
// are written serially, and id order is their commit order, as DESIGN.md's
// per-key order assumes) on several topics. Some transactions roll back;
// their rows must never reach Kafka.
type load struct {
	t      *testing.T
	cancel context.CancelFunc
	g      errgroup.Group

	mu   sync.Mutex
	rows map[int64]relaytest.Message

	committed  atomic.Int64
	rolledBack atomic.Int64
}

// startLoad starts writers writing to db's outbox through db.Pool (which
// talks to Postgres directly, never through a scenario's proxy) until stop.
func startLoad(t *testing.T, db *relaytest.DB, topics []string, writers int) *load {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{t: t, cancel: cancel, rows: map[int64]relaytest.Message{}}
	seed := uint64(time.Now().UnixNano())
	t.Logf("load seed %d", seed)
	for w := range writers {
		l.g.Go(func() error { return l.write(ctx, db.Pool, topics, w, rand.New(rand.NewPCG(seed, uint64(w)))) })
	}
	t.Cleanup(cancel)
	return l
}

// write is one writer: a transaction of 1 to 8 rows every few milliseconds.
func (l *load) write(ctx context.Context, pool *pgxpool.Pool, topics []string, w int, rng *rand.Rand) error {
	pace := time.NewTicker(20 * time.Millisecond)
	defer pace.Stop()
	for seq := 0; ; {
		select {
		case <-ctx.Done():
			return nil
		case <-pace.C:
		}
		n := 1 + rng.IntN(8)
		msgs := make([]relaytest.Message, n)
		for i := range msgs {
			seq++
			m := relaytest.Message{
				Topic:   topics[rng.IntN(len(topics))],
				Key:     fmt.Appendf(nil, "w%d-k%d", w, rng.IntN(12)),
				Payload: fmt.Appendf(nil, `{"writer":%d,"seq":%d}`, w, seq),
				Headers: map[string]string{"writer": strconv.Itoa(w), "seq": strconv.Itoa(seq)},
			}
			switch rng.IntN(40) {
			case 0:
				m.Key = nil // no order promise, but it must arrive
			case 1:
				m.Payload = nil // a tombstone
			case 2:
				m.Headers = map[string]string{}
			}
			msgs[i] = m
		}
		rollback := rng.IntN(15) == 0
		// The transaction itself ignores ctx: stopping the load must not
		// leave a commit whose outcome is unknown.
		ids, err := insertTx(pool, msgs, rollback)
		if err != nil {
			return fmt.Errorf("writer %d: %w", w, err)
		}
		if rollback {
			l.rolledBack.Add(1)
			continue
		}
		l.committed.Add(1)
		l.mu.Lock()
		for i, id := range ids {
			l.rows[id] = msgs[i]
		}
		l.mu.Unlock()
	}
}

// insertTx inserts msgs in one transaction, in one round trip, and commits
// it, or rolls it back when rollback is set.
func insertTx(pool *pgxpool.Pool, msgs []relaytest.Message, rollback bool) ([]int64, error) {
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var b pgx.Batch
	ids := make([]int64, len(msgs))
	for i, m := range msgs {
		b.Queue(`INSERT INTO messages (topic, key, payload, headers) VALUES ($1, $2, $3, $4) RETURNING id`,
			m.Topic, m.Key, m.Payload, m.Headers).QueryRow(func(r pgx.Row) error { return r.Scan(&ids[i]) })
	}
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return nil, err
	}
	if rollback {
		return ids, tx.Rollback(ctx)
	}
	return ids, tx.Commit(ctx)
}

// size returns how many committed rows the load has written so far.
func (l *load) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.rows)
}

// stop ends the writers and returns every committed row by id.
func (l *load) stop() map[int64]relaytest.Message {
	l.t.Helper()
	l.cancel()
	if err := l.g.Wait(); err != nil {
		l.t.Fatalf("load: %v", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rows
}

// runFor runs fault, a function that injects one fault and returns, over
// and over for d while the load runs, and returns how many times it ran.
// Between faults the relay gets a moment to make progress.
func runFor(t *testing.T, d time.Duration, gap time.Duration, fault func(i int)) int {
	t.Helper()
	deadline := time.Now().Add(d)
	n := 0
	for time.Now().Before(deadline) && !t.Failed() {
		fault(n)
		n++
		pause(gap)
	}
	return n
}

// pause waits for d, so scenarios read as "fault, pause, heal". The fault
// loops have nothing to wait on but time: the fault lasts as long as it lasts.
func pause(d time.Duration) {
	<-time.After(d)
}

// jitter returns a duration in [d/2, 3d/2).
func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d)))
}
