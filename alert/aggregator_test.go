package alert

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 1, 2, 15, 4, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type aggBundle struct {
	agg   *Aggregator
	clock *fakeClock
	out   *recorder
}

func setupAggregator(t *testing.T, cfg AggregatorConfig) *aggBundle {
	t.Helper()
	b := &aggBundle{clock: newFakeClock(), out: newRecorder()}
	cfg.Now = b.clock.Now
	b.agg = NewAggregator(cfg, b.out)
	return b
}

func escalated(topic string, i int) Alert {
	return Alert{Kind: KindEscalated, Topic: topic, Count: 1, Message: fmt.Sprintf("row %d of %s too large", i, topic)}
}

func requireAlerts(t *testing.T, got []Alert, n int) {
	t.Helper()
	if len(got) != n {
		var b strings.Builder
		for _, a := range got {
			fmt.Fprintf(&b, "\n  %+v", a)
		}
		t.Fatalf("downstream got %d alerts, want %d:%s", len(got), n, b.String())
	}
}

func TestAggregatorOneSummaryPerWindow(t *testing.T) {
	t.Parallel()
	b := setupAggregator(t, AggregatorConfig{})
	ctx := t.Context()

	for i := range 37 {
		b.agg.Raise(ctx, escalated("X", i))
		b.clock.Advance(time.Second)
	}
	got := b.out.all()
	requireAlerts(t, got, 1)
	if got[0].Message != "row 0 of X too large" || got[0].Count != 1 {
		t.Fatalf("immediate alert = %+v, want the first one as raised", got[0])
	}

	// 37s in: the window is still open.
	b.agg.flushDue(ctx)
	requireAlerts(t, b.out.all(), 1)

	b.clock.Advance(23 * time.Second) // the minute is over
	next := b.agg.flushDue(ctx)
	got = b.out.all()
	requireAlerts(t, got, 2)
	s := got[1]
	want := "37 rows escalated on topic X in the last minute; first alert: row 0 of X too large"
	if s.Kind != KindEscalated || s.Topic != "X" || s.Count != 37 || s.Message != want {
		t.Fatalf("summary = %+v\nwant Count 37 and Message %q", s, want)
	}
	if !s.At.Equal(b.clock.Now()) {
		t.Fatalf("summary At = %v, want the flush time %v", s.At, b.clock.Now())
	}
	if want := b.clock.Now().Add(time.Minute); !next.Equal(want) {
		t.Fatalf("next window end = %v, want %v", next, want)
	}

	// A quiet window closes the group: nothing is sent, and the next alert
	// goes out at once again.
	b.clock.Advance(time.Minute)
	if next := b.agg.flushDue(ctx); !next.IsZero() {
		t.Fatalf("next window end = %v after a quiet window, want none", next)
	}
	requireAlerts(t, b.out.all(), 2)
	b.agg.Raise(ctx, escalated("X", 99))
	got = b.out.all()
	requireAlerts(t, got, 3)
	if got[2].Message != "row 99 of X too large" {
		t.Fatalf("after a quiet window got %+v, want the alert as raised", got[2])
	}
}

func TestAggregatorSingleAlertHasNoSummary(t *testing.T) {
	t.Parallel()
	b := setupAggregator(t, AggregatorConfig{})
	b.agg.Raise(t.Context(), Alert{Kind: KindOutage, Message: "Kafka unreachable"})
	b.clock.Advance(time.Minute)
	b.agg.flushDue(t.Context())
	b.agg.Flush(t.Context())
	requireAlerts(t, b.out.all(), 1)
}

func TestAggregatorSteadyStreamIsRateLimited(t *testing.T) {
	t.Parallel()
	b := setupAggregator(t, AggregatorConfig{Window: 10 * time.Second})
	ctx := t.Context()

	// Three windows with alerts in each: one message at once, then one
	// summary per window and nothing else.
	for range 3 {
		for i := range 5 {
			b.agg.Raise(ctx, escalated("X", i))
			b.clock.Advance(time.Second)
		}
		b.clock.Advance(5 * time.Second)
		b.agg.flushDue(ctx)
	}
	got := b.out.all()
	requireAlerts(t, got, 4)
	for i, want := range []int{1, 5, 5, 5} {
		if got[i].Count != want {
			t.Errorf("message %d Count = %d, want %d (%s)", i, got[i].Count, want, got[i].Message)
		}
	}
	if !strings.Contains(got[2].Message, "5 rows escalated on topic X in the last 10s") {
		t.Errorf("second summary = %q", got[2].Message)
	}
}

func TestAggregatorGroupsByKindAndTopic(t *testing.T) {
	t.Parallel()
	b := setupAggregator(t, AggregatorConfig{})
	ctx := t.Context()

	for i := range 3 {
		b.agg.Raise(ctx, escalated("X", i))
		b.agg.Raise(ctx, escalated("Y", i))
		b.agg.Raise(ctx, Alert{Kind: KindEscalated, Topic: "Y", Count: 10, Message: "batch"})
		b.agg.Raise(ctx, Alert{Kind: KindOutage, Message: fmt.Sprintf("outage %d", i)})
		b.agg.Raise(ctx, Alert{Kind: KindLag, Topic: "X", Count: 5000, Message: "oldest pending row is 10m old"})
	}
	requireAlerts(t, b.out.all(), 4) // the first of each group, at once

	b.clock.Advance(time.Minute)
	b.agg.flushDue(ctx)
	got := b.out.all()[4:]
	requireAlerts(t, got, 4)
	// Summaries come in a stable order: by kind, then topic.
	want := []struct {
		kind  Kind
		topic string
		count int
		msg   string
	}{
		{KindLag, "X", 3, "3 delivery lag alerts on topic X in the last minute; first alert: oldest pending row is 10m old"},
		{KindOutage, "", 3, "3 Kafka outage alerts in the last minute; first alert: outage 0"},
		{KindEscalated, "X", 3, "3 rows escalated on topic X in the last minute; first alert: row 0 of X too large"},
		{KindEscalated, "Y", 33, "33 rows escalated on topic Y in the last minute; first alert: row 0 of Y too large"},
	}
	for i, w := range want {
		g := got[i]
		if g.Kind != w.kind || g.Topic != w.topic || g.Count != w.count || g.Message != w.msg {
			t.Errorf("summary %d = %+v\nwant %+v", i, g, w)
		}
	}
}

func TestAggregatorTopicsPastLimitShareOneSummary(t *testing.T) {
	t.Parallel()
	b := setupAggregator(t, AggregatorConfig{MaxTopics: 2})
	ctx := t.Context()

	for _, topic := range []string{"a", "b", "c", "d", "c"} {
		b.agg.Raise(ctx, escalated(topic, 0))
	}
	b.agg.Raise(ctx, Alert{Kind: KindOutage, Message: "no topic, no limit"})
	got := b.out.all()
	requireAlerts(t, got, 3)
	if got[0].Topic != "a" || got[1].Topic != "b" || got[2].Kind != KindOutage {
		t.Fatalf("immediate alerts = %+v, want topics a and b and the outage", got)
	}

	b.clock.Advance(time.Minute)
	b.agg.flushDue(ctx)
	got = b.out.all()
	requireAlerts(t, got, 4)
	want := "3 rows escalated on 2 other topics in the last minute; first alert (topic c): row 0 of c too large"
	if got[3].Message != want || got[3].Topic != "" || got[3].Count != 3 {
		t.Fatalf("overflow summary = %+v\nwant %q", got[3], want)
	}
}

func TestAggregatorRaiseRollsLateWindow(t *testing.T) {
	t.Parallel()
	// Without Run, the next alert of a group ends its overdue window.
	b := setupAggregator(t, AggregatorConfig{})
	ctx := t.Context()
	for i := range 3 {
		b.agg.Raise(ctx, escalated("X", i))
	}
	b.clock.Advance(time.Minute + 10*time.Second)
	b.agg.Raise(ctx, escalated("X", 3))
	got := b.out.all()
	requireAlerts(t, got, 2)
	if got[1].Count != 3 || !strings.HasPrefix(got[1].Message, "3 rows escalated on topic X in the last 1m10s;") {
		t.Fatalf("late summary = %+v", got[1])
	}
	// Row 3 opened the next window and is counted there, not sent at once.
	b.agg.Flush(ctx)
	got = b.out.all()
	requireAlerts(t, got, 3)
	if got[2].Count != 1 || !strings.HasSuffix(got[2].Message, "first alert: row 3 of X too large") {
		t.Fatalf("flushed summary = %+v", got[2])
	}
}

// runAggregator runs agg.Run until the test ends or the returned stop is
// called, and fails the test if Run does not return promptly.
func runAggregator(t *testing.T, agg *Aggregator) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agg.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v, want nil on shutdown", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return within 10s of its context ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func TestAggregatorRunFlushesOnShutdown(t *testing.T) {
	t.Parallel()
	b := setupAggregator(t, AggregatorConfig{})
	stop := runAggregator(t, b.agg)

	for i := range 5 {
		b.agg.Raise(t.Context(), escalated("X", i))
	}
	b.clock.Advance(12 * time.Second)
	stop()

	got := b.out.all()
	requireAlerts(t, got, 2)
	want := "5 rows escalated on topic X in the last 12s; first alert: row 0 of X too large"
	if got[1].Message != want {
		t.Fatalf("shutdown summary = %q, want %q", got[1].Message, want)
	}
}

func TestAggregatorRunFlushesAtWindowEnd(t *testing.T) {
	t.Parallel()
	// The real clock with a short window: Run's own timer must fire. The
	// test waits on the summary's arrival, with a deadline, not on time.
	out := newRecorder()
	agg := NewAggregator(AggregatorConfig{Window: 20 * time.Millisecond}, out)
	runAggregator(t, agg)

	for i := range 4 {
		agg.Raise(t.Context(), escalated("X", i))
	}
	if a := out.wait(t); a.Count != 1 {
		t.Fatalf("first alert = %+v, want the immediate one", a)
	}
	s := out.wait(t)
	if s.Count != 4 || !strings.HasPrefix(s.Message, "4 rows escalated on topic X in the last ") {
		t.Fatalf("summary = %+v", s)
	}
}

func TestSpan(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{
		0:                                     "1s",
		12*time.Second + 300*time.Millisecond: "12s",
		time.Minute:                           "minute",
		90 * time.Second:                      "1m30s",
		5 * time.Minute:                       "5m",
		time.Hour:                             "hour",
		2 * time.Hour:                         "2h",
		2*time.Hour + 3*time.Minute:           "2h3m",
	} {
		if got := span(d); got != want {
			t.Errorf("span(%v) = %q, want %q", d, got, want)
		}
	}
}

// Two outboxes of one process escalating on the same topic are two groups:
// each summary names its outbox and counts its rows only.
func TestAggregatorGroupsByOutbox(t *testing.T) {
	t.Parallel()
	b := setupAggregator(t, AggregatorConfig{})
	ctx := t.Context()
	for i := range 3 {
		for _, outbox := range []string{"tenant_a", "tenant_b"} {
			a := escalated("orders", i)
			a.Outbox = outbox
			b.agg.Raise(ctx, a)
		}
	}
	first := b.out.all()
	requireAlerts(t, first, 2) // the first of each outbox's group, at once
	if first[0].Outbox != "tenant_a" || first[1].Outbox != "tenant_b" {
		t.Errorf("first alerts name outboxes %q and %q, want tenant_a and tenant_b", first[0].Outbox, first[1].Outbox)
	}
	b.clock.Advance(time.Minute)
	b.agg.flushDue(ctx)
	got := b.out.all()[2:]
	requireAlerts(t, got, 2)
	for i, outbox := range []string{"tenant_a", "tenant_b"} {
		if got[i].Outbox != outbox || got[i].Count != 3 || got[i].Topic != "orders" {
			t.Errorf("summary %d = %+v, want outbox %s, 3 rows on orders", i, got[i], outbox)
		}
	}
}
