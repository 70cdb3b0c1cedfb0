package faults

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/internal/relaytest"
)

// faultCounter counts injected faults by kind, for the figures.
type faultCounter struct {
	order []string
	n     map[string]int
}

func (c *faultCounter) add(kind string) {
	if c.n == nil {
		c.n = map[string]int{}
	}
	if c.n[kind] == 0 {
		c.order = append(c.order, kind)
	}
	c.n[kind]++
}

func (c *faultCounter) total() int {
	n := 0
	for _, v := range c.n {
		n += v
	}
	return n
}

func (c *faultCounter) String() string {
	var parts []string
	for _, k := range c.order {
		parts = append(parts, fmt.Sprintf("%s %d", k, c.n[k]))
	}
	return strings.Join(parts, ", ")
}

// Scenario 2: the network between the relay and Kafka is cut and healed
// through a proxy, in four ways in turn: connections closed and refused;
// responses black-holed until the connection times out (the broker wrote
// the batch, the relay never hears); connections reset as soon as the relay
// sends; and a cut in the middle of a produce — the broker holds a produce
// request until the proxy has closed the connection, then appends it, so
// the acknowledgement is lost for certain.
func TestKafkaNetworkCutAndHealed(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	topics := []string{"orders", "payments", "users"}
	cluster, net := newProxiedCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()

	// Armed, the next produce request is held until the proxy is cut.
	var cutNext atomic.Bool
	midCut := make(chan struct{}, 1)
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		if cutNext.CompareAndSwap(true, false) {
			done := make(chan struct{})
			go func() { net.cut(); close(done) }()
			cluster.SleepControl(func() { <-done })
			midCut <- struct{}{}
		}
		return nil, nil, false // the broker handles it: the records are appended
	})

	p := startRelay(t, "relay", relayEnv(db, relayDatabaseURL(t, db, ""), brokers))
	waitListening(t, db, 1)
	l := startLoad(t, db, topics, 4)
	var faults faultCounter
	runFor(t, loadDuration(t, 10*time.Second), jitter(600*time.Millisecond), func(i int) {
		switch i % 4 {
		case 0, 1, 2:
			net.injectCut(i%4, &faults)
		case 3:
			cutNext.Store(true)
			cut := true
			select {
			case <-midCut:
			case <-time.After(5 * time.Second):
				// No produce came, unless the hook fired just now:
				// then heal what it cut.
				if cut = !cutNext.CompareAndSwap(true, false); cut {
					<-midCut
				}
			}
			if cut {
				faults.add("cut in the middle of a produce")
				pause(jitter(time.Second))
				net.heal()
			}
		}
		p.checkAlive()
	})
	l.stop().check(t, brokers, faults.total(), faults.String())
	p.stop()
}

// Scenario 4: Kafka answers produce requests with retriable errors, with
// REQUEST_TIMED_OUT or NOT_ENOUGH_REPLICAS_AFTER_APPEND after appending the
// records, drops the connection without answering, and answers only after
// the produce timeout (1s here) has passed. The load also writes a few bad
// rows (a header that is not a string): they, and only they, must be
// escalated, whatever Kafka does meanwhile.
func TestKafkaErrorsAndDelays(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	topics := []string{"orders", "payments", "users"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()

	p := startRelay(t, "relay", relayEnv(db, relayDatabaseURL(t, db, ""), brokers, "RELAY_PRODUCE_TIMEOUT", "1s"))
	waitListening(t, db, 1)
	l := startLoadWithBadRows(t, db, topics, 4, true)
	var faults faultCounter
	produce := []kmsg.Key{kmsg.Produce}
	// A fault that no produce request met before the next one is taken
	// away: while the relay is slowed down by the faults it sends few
	// requests, and faults piling up would turn a 0.5 s rhythm into a
	// permanent outage, which is not what this scenario is about.
	var leftover []*kfake.FaultHandle
	fresh := func(installed time.Time) bool { return time.Since(installed) < time.Second }
	runFor(t, loadDuration(t, 10*time.Second), jitter(500*time.Millisecond), func(i int) {
		for _, h := range leftover {
			h.Remove()
		}
		leftover = leftover[:0]
		installed := time.Now()
		switch i % 6 {
		case 0:
			faults.add("NOT_LEADER_FOR_PARTITION")
			leftover = append(leftover, cluster.Fault(kfake.Fault{Keys: produce, Err: kerr.NotLeaderForPartition, Count: 3}))
		case 1:
			faults.add("NOT_ENOUGH_REPLICAS for 700ms")
			h := cluster.Fault(kfake.Fault{Keys: produce, Err: kerr.NotEnoughReplicas, Count: -1})
			pause(700 * time.Millisecond)
			h.Remove()
		case 2:
			faults.add("REQUEST_TIMED_OUT after the write")
			leftover = append(leftover, cluster.Fault(kfake.Fault{Keys: produce, Err: kerr.RequestTimedOut, Count: 3}))
		case 3:
			faults.add("NOT_ENOUGH_REPLICAS_AFTER_APPEND")
			leftover = append(leftover, cluster.Fault(kfake.Fault{Keys: produce, Err: kerr.NotEnoughReplicasAfterAppend, Count: 3}))
		case 4:
			faults.add("connection dropped unanswered")
			cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
				if !fresh(installed) {
					cluster.DropControl() // stale: let the request through
					return nil, nil, false
				}
				return nil, errors.New("dropped by the test"), true
			})
		case 5:
			faults.add("answer delayed beyond the produce timeout")
			delayed := make(chan struct{}, 1)
			cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
				if fresh(installed) {
					cluster.SleepControl(func() { <-time.After(2500 * time.Millisecond) })
				}
				cluster.DropControl()
				delayed <- struct{}{}
				return nil, nil, false
			})
			select {
			case <-delayed:
			case <-time.After(10 * time.Second):
			}
		}
		p.checkAlive()
	})
	l.stop().check(t, brokers, faults.total(), faults.String())
	p.stop()
}

// Scenario 5: the broker process restarts mid-load, over and over, keeping
// its log in a data directory. Batches in flight at the stop are answered
// by nobody; the relay waits, reconnects and produces them again.
func TestKafkaBrokerRestarts(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	topics := []string{"orders", "payments"}
	dataDir := t.TempDir()
	start := func(port int) *kfake.Cluster {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dataDir), kfake.SeedTopics(3, topics...))
		if err != nil {
			t.Fatalf("kfake: %v", err)
		}
		return c
	}
	cluster := start(0)
	brokers := cluster.ListenAddrs()
	port := 0
	if _, err := fmt.Sscanf(brokers[0][strings.LastIndex(brokers[0], ":")+1:], "%d", &port); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cluster.Close() })

	p := startRelay(t, "relay", relayEnv(db, relayDatabaseURL(t, db, ""), brokers))
	waitListening(t, db, 1)
	l := startLoad(t, db, topics, 4)
	restarts := runFor(t, loadDuration(t, 10*time.Second), jitter(time.Second), func(int) {
		cluster.Close()
		pause(jitter(time.Second))
		cluster = start(port)
		p.checkAlive()
	})
	l.stop().check(t, brokers, restarts, "broker restart with its data directory")
	p.stop()
}
