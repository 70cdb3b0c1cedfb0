package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/wait"
	"github.com/outboxrelay/relay/relay"
)

// killSessionsTimeout bounds how long the kill waits for the killed
// instance's Postgres sessions to be gone.
const killSessionsTimeout = 10 * time.Second

// errKilled is what a killed instance's dials return.
var errKilled = errors.New("bench: instance killed")

// cutter dials an instance's Postgres connections (its pool's and its
// LISTEN connection, which copies the pool's config) and can close them all
// at once, as the death of its process would: open sockets close, and new
// dials fail, so its open transactions roll back.
type cutter struct {
	dial  pgconn.DialFunc
	mu    sync.Mutex
	conns []net.Conn
	cut   bool
}

// Dial is a pgconn.DialFunc.
func (c *cutter) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := c.dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cut {
		_ = conn.Close()
		return nil, errKilled
	}
	c.conns = append(c.conns, conn)
	return conn, nil
}

// cutAll closes every connection the instance has and refuses new ones.
func (c *cutter) cutAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cut = true
	for _, conn := range c.conns {
		_ = conn.Close()
	}
	c.conns = nil
}

// killWatch follows the instance killed mid-phase: the rows its Kafka
// client was handed, and when a survivor first acknowledged each of them
// after the kill. A row the victim had marked sent is never claimed again,
// and while the victim lived it held the lock of every row it had claimed,
// so the rows a survivor acknowledges after the kill that the victim had
// been handed are exactly the rows the victim took and did not finish: its
// share, which only the survivors can deliver now. The victim is chosen at
// the kill, among the instances with records in flight (a standby has
// none), so every instance's client marks what it is handed.
type killWatch struct {
	at      atomic.Int64    // ns since the phase start when the kill began; 0: not yet
	victim  atomic.Int32    // index of the victim, valid once at is set
	handed  []atomic.Uint64 // by id: bit i set once handed to instance i's client
	retaken []atomic.Int64  // by id: a survivor's first ack after the kill, ns since the phase start
}

// maxKillInstances bounds the instances of a phase with a kill (the bits
// of handed).
const maxKillInstances = 64

func newKillWatch(rows int) *killWatch {
	return &killWatch{handed: make([]atomic.Uint64, rows+1), retaken: make([]atomic.Int64, rows+1)}
}

// tookOver reports whether row id is in the victim's share; false on a nil
// watch (no kill).
func (w *killWatch) tookOver(id int64) bool {
	return w != nil && w.retaken[id].Load() != 0
}

// killHook is instance i's view of the kill: it marks the rows handed to
// the instance's client and, once another instance was killed, when this
// one acknowledges a row the victim had been handed.
type killHook struct {
	w  *killWatch
	tl *timeline
	i  int
}

func (h killHook) OnProduceRecordBuffered(rec *kgo.Record) {
	if id, ok := outboxID(rec, len(h.w.handed)); ok {
		h.w.handed[id].Or(1 << h.i)
	}
}

func (h killHook) OnProduceRecordUnbuffered(rec *kgo.Record, err error) {
	if err != nil || h.w.at.Load() == 0 {
		return
	}
	v := int(h.w.victim.Load())
	if v == h.i {
		return
	}
	if id, ok := outboxID(rec, len(h.w.handed)); ok && h.w.handed[id].Load()&(1<<v) != 0 {
		h.w.retaken[id].CompareAndSwap(0, h.tl.since())
	}
}

var (
	_ kgo.HookProduceRecordBuffered   = killHook{}
	_ kgo.HookProduceRecordUnbuffered = killHook{}
)

// outboxID is the row id in rec's outbox-id header (the relay and the
// baseline put it first), if it lies in 1..n-1.
func outboxID(rec *kgo.Record, n int) (int64, bool) {
	if len(rec.Headers) == 0 || rec.Headers[0].Key != relay.HeaderOutboxID {
		return 0, false
	}
	id, err := strconv.ParseInt(string(rec.Headers[0].Value), 10, 64)
	return id, err == nil && id >= 1 && id < int64(n)
}

// killOne waits delay into the phase, then for an instance to have records
// in flight to Kafka (a crash with nothing in flight would leave the others
// nothing to take over), and kills the first such one as a crash would: its Postgres
// connections close and its backends are terminated, so its open
// transactions roll back and its row locks go at once; its Run context is
// cancelled, with no connection left for a graceful drain; its Kafka client
// is closed, failing what it had buffered. It returns once the victim's
// sessions are gone, or without killing if ctx ends first (the phase is
// over).
func (e *env) killOne(ctx context.Context, delay time.Duration, instances []*instance, w *killWatch, tl *timeline) error {
	if wait.Sleep(ctx, delay) != nil {
		return nil
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	inFlight := func(in *instance) bool { return in.client.BufferedProduceRecords() > 0 }
	v := slices.IndexFunc(instances, inFlight)
	for v < 0 {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		v = slices.IndexFunc(instances, inFlight)
	}
	victim := instances[v]
	w.victim.Store(int32(v))
	w.at.Store(tl.since())
	victim.cut.cutAll()
	victim.stop()
	victim.client.Close()
	victim.killed = true
	// A backend notices its closed socket only when it next reads; one in
	// the middle of a query would hold its locks until the query ends.
	if _, err := e.pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, victim.app); err != nil {
		return fmt.Errorf("kill %s: terminate its backends: %w", victim.app, err)
	}
	deadline := time.Now().Add(killSessionsTimeout)
	for {
		var n int
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1`, victim.app).Scan(&n); err != nil {
			return fmt.Errorf("kill %s: count its sessions: %w", victim.app, err)
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kill %s: %d sessions still there after %v", victim.app, n, killSessionsTimeout)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// result is what the kill did, or nil if the phase ended before it.
func (w *killWatch) result(instances []*instance, poll time.Duration) *Kill {
	at := w.at.Load()
	if at == 0 {
		return nil
	}
	k := &Kill{Instance: instances[w.victim.Load()].app, AtSec: time.Duration(at).Seconds()}
	var last int64
	for id := range w.retaken {
		if r := w.retaken[id].Load(); r != 0 {
			k.RowsTakenOver++
			last = max(last, r)
		}
	}
	if k.RowsTakenOver > 0 {
		d := time.Duration(last - at)
		k.TakeoverMs = float64(d) / float64(time.Millisecond)
		k.TakeoverPollIntervals = float64(d) / float64(poll)
	}
	return k
}
