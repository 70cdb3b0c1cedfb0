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

	"github.com/outboxrelay/relay/internal/relaytest"
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
// are written serially, and id order is their commit order, as the per-key
// order promise assumes) on several topics. Some transactions roll back;
// their rows must never reach Kafka.
type load struct {
	t      *testing.T
	db     *relaytest.DB
	topics []string
	cancel context.CancelFunc
	g      errgroup.Group

	mu   sync.Mutex
	rows map[int64]relaytest.Message
	// bad are the ids of rows written with a malformed header: the relay
	// must escalate them (row_fatal), and only them.
	bad map[int64]bool
	// expired are the ids of rows written already past their expires_at:
	// the relay must escalate them as expired. mayExpire are rows whose
	// expires_at is near: they are sent, or escalated as expired.
	expired, mayExpire map[int64]bool

	committed  atomic.Int64
	rolledBack atomic.Int64
}

// startLoad starts writers writing to db's outbox through db.Pool (which
// talks to Postgres directly, never through a scenario's proxy) until stop.
func startLoad(t *testing.T, db *relaytest.DB, topics []string, writers int) *load {
	t.Helper()
	return startLoadWithBadRows(t, db, topics, writers, false)
}

// startLoadWithBadRows is startLoad, and if withBad, about one transaction
// in fifty also writes a row whose header is a number, not a string: a row
// the relay must escalate as row_fatal while the faults go on. Each bad row
// has a key of its own, so it holds back no good row.
func startLoadWithBadRows(t *testing.T, db *relaytest.DB, topics []string, writers int, withBad bool) *load {
	t.Helper()
	return startMixedLoad(t, db, topics, writers, mix{bad: withBad})
}

// mix says what else than plain rows a load writes.
type mix struct {
	// bad: see startLoadWithBadRows.
	bad bool
	// options: about one row in six is delayed (deliver_after up to 1.5s
	// ahead, on the writer's own keys, so it holds back the later rows of
	// its key), one in twelve expires far ahead (it must be sent), and
	// about one transaction in forty also writes a row on a key of its
	// own that expires within 300ms (sent or escalated as expired) or had
	// expired already (escalated as expired).
	options bool
}

// startMixedLoad is startLoad with the extra rows of m.
func startMixedLoad(t *testing.T, db *relaytest.DB, topics []string, writers int, m mix) *load {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{t: t, db: db, topics: topics, cancel: cancel, rows: map[int64]relaytest.Message{}, bad: map[int64]bool{},
		expired: map[int64]bool{}, mayExpire: map[int64]bool{}}
	seed := uint64(time.Now().UnixNano())
	t.Logf("load seed %d", seed)
	for w := range writers {
		l.g.Go(func() error {
			return l.write(ctx, db.Pool, topics, w, m, rand.New(rand.NewPCG(seed, uint64(w))))
		})
	}
	t.Cleanup(cancel)
	return l
}

// rowOptions are the delivery options a load row sets; nil: none.
type rowOptions struct {
	deliverAfter, expiresAt *time.Time
}

// write is one writer: a transaction of 1 to 8 rows every few milliseconds.
func (l *load) write(ctx context.Context, pool *pgxpool.Pool, topics []string, w int, m mix, rng *rand.Rand) error {
	withBad := m.bad
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
		opts := make([]rowOptions, n)
		for i := range msgs {
			if m.options {
				switch now := time.Now(); rng.IntN(12) {
				case 0, 1:
					opts[i].deliverAfter = ptr(now.Add(time.Duration(rng.IntN(1500)) * time.Millisecond))
				case 2:
					opts[i].expiresAt = ptr(now.Add(time.Hour))
				}
			}
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
		var expiring int // 1: expires soon; 2: expired already
		if m.options && rng.IntN(40) == 0 {
			seq++
			expiring = 1 + rng.IntN(2)
			at := time.Now().Add(300 * time.Millisecond)
			if expiring == 2 {
				at = time.Now().Add(-time.Second)
			}
			msgs = append(msgs, relaytest.Message{Topic: topics[rng.IntN(len(topics))], Key: fmt.Appendf(nil, "exp-w%d-%d", w, seq),
				Payload: fmt.Appendf(nil, `{"writer":%d,"seq":%d}`, w, seq), Headers: map[string]string{}})
			opts = append(opts, rowOptions{expiresAt: &at})
		}
		rollback := rng.IntN(15) == 0
		bad := withBad && !rollback && rng.IntN(50) == 0
		var badMsg relaytest.Message
		if bad {
			seq++
			badMsg = relaytest.Message{
				Topic:   topics[rng.IntN(len(topics))],
				Key:     fmt.Appendf(nil, "bad-w%d-%d", w, seq),
				Payload: fmt.Appendf(nil, `{"writer":%d,"seq":%d,"bad":true}`, w, seq),
			}
		}
		// The transaction itself ignores ctx: stopping the load must not
		// leave a commit whose outcome is unknown.
		ids, badID, err := insertTx(pool, msgs, opts, bad, badMsg, rollback)
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
		switch expiring {
		case 1:
			l.mayExpire[ids[len(ids)-1]] = true
		case 2:
			l.expired[ids[len(ids)-1]] = true
		}
		if bad {
			l.rows[badID] = badMsg
			l.bad[badID] = true
		}
		l.mu.Unlock()
	}
}

// insertTx inserts msgs, and with bad also badMsg with a malformed header
// (badID is its id), in one transaction, in one round trip, and commits it,
// or rolls it back when rollback is set.
func insertTx(pool *pgxpool.Pool, msgs []relaytest.Message, opts []rowOptions, bad bool, badMsg relaytest.Message, rollback bool) (ids []int64, badID int64, err error) {
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, 0, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var b pgx.Batch
	ids = make([]int64, len(msgs))
	for i, m := range msgs {
		b.Queue(`INSERT INTO messages (topic, key, payload, headers, deliver_after, expires_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
			m.Topic, m.Key, m.Payload, m.Headers, opts[i].deliverAfter, opts[i].expiresAt).QueryRow(func(r pgx.Row) error { return r.Scan(&ids[i]) })
	}
	if bad {
		b.Queue(`INSERT INTO messages (topic, key, payload, headers) VALUES ($1, $2, $3, '{"bad": 1}') RETURNING id`,
			badMsg.Topic, badMsg.Key, badMsg.Payload).QueryRow(func(r pgx.Row) error { return r.Scan(&badID) })
	}
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return nil, 0, err
	}
	if rollback {
		return ids, 0, tx.Rollback(ctx)
	}
	return ids, badID, tx.Commit(ctx)
}

// size returns how many committed rows the load has written so far.
func (l *load) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.rows)
}

// stop ends the writers and returns what the application wrote, for the
// invariant checker: every committed row by id, the bad ones among them, and
// the count of transactions that rolled back.
func (l *load) stop() outcome {
	l.t.Helper()
	l.cancel()
	if err := l.g.Wait(); err != nil {
		l.t.Fatalf("load: %v", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return outcome{db: l.db, topics: l.topics, rows: l.rows, badRows: l.bad, expired: l.expired, mayExpire: l.mayExpire, rolledBack: l.rolledBack.Load()}
}

func ptr[T any](v T) *T { return &v }

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
