package bench_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/outboxrelay/relay/internal/bench"
	"github.com/outboxrelay/relay/internal/relaytest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestKillOneRelay runs the kill scenario small: two and three relays drain
// a backlog, and one of each is killed as soon as it has records in flight.
// The survivors must deliver everything, in per-key order, with no
// duplicate outside the victim's share, and the takeover must be measured.
func TestKillOneRelay(t *testing.T) {
	t.Parallel()
	brokers := relaytest.NewCluster(t, 4).ListenAddrs()
	const rows = 5000
	report, err := bench.Run(context.Background(), bench.Config{
		DatabaseURL: relaytest.DatabaseURL(),
		Brokers:     brokers,
		Preload:     rows,
		// Chains of two rows of a key in a batch, so that later waves
		// are taken over too.
		Keys:         100,
		Partitions:   4,
		BatchSize:    200,
		PollInterval: 100 * time.Millisecond,
		Relays:       []int{2, 3},
		Rounds:       1,
		// The kill waits for the victim to have records in flight, so
		// the smallest delay kills it mid-drain.
		KillOneAfter: time.Nanosecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(report.Variants) != 2 {
		t.Fatalf("want relay x2 and relay x3; got %d variants", len(report.Variants))
	}
	for _, v := range report.Variants {
		p := v.Phases[0]
		if p.Rows != rows {
			t.Errorf("%s: %d rows, want %d", v.Name, p.Rows, rows)
		}
		c := p.Check
		if c == nil {
			t.Fatalf("%s: no check", v.Name)
		}
		if c.Missing != 0 || c.OrderViolations != 0 || c.Duplicates != 0 || c.Foreign != 0 {
			t.Errorf("%s: check %+v: want no missing row, order violation, duplicate outside the victim's share or foreign record", v.Name, c)
		}
		k := p.Kill
		if k == nil {
			t.Errorf("%s: no kill reported", v.Name)
			continue
		}
		t.Logf("%s: killed %s at %.3fs, %d rows taken over in %.1f ms, %d duplicates after the kill, %d records",
			v.Name, k.Instance, k.AtSec, k.RowsTakenOver, k.TakeoverMs, c.DuplicatesAfterKill, c.Records)
		if k.RowsTakenOver <= 0 || k.TakeoverMs <= 0 || k.TakeoverPollIntervals <= 0 {
			t.Errorf("%s: kill %+v: want a share taken over and a positive takeover", v.Name, k)
		}
		if c.DuplicatesAfterKill > k.RowsTakenOver {
			t.Errorf("%s: %d duplicates after the kill, more than the %d rows taken over", v.Name, c.DuplicatesAfterKill, k.RowsTakenOver)
		}
		if v.Median.Kills != 1 || v.Median.TakeoverMaxMs != k.TakeoverMs {
			t.Errorf("%s: summary %+v does not match the phase's kill %+v", v.Name, v.Median, k)
		}
	}
}

// TestKillNeedsSurvivors: a kill with a single relay would leave nobody to
// take over.
func TestKillNeedsSurvivors(t *testing.T) {
	t.Parallel()
	_, err := bench.Run(context.Background(), bench.Config{
		DatabaseURL: relaytest.DatabaseURL(), Brokers: []string{"127.0.0.1:1"},
		Preload: 10, Relays: []int{1, 2}, KillOneAfter: time.Second,
	})
	if err == nil {
		t.Fatal("a kill with one relay instance was accepted")
	}
}
