package alert

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultWindow is the Aggregator's window when its config leaves it zero.
	DefaultWindow = time.Minute
	// DefaultMaxTopics is the Aggregator's per-kind topic bound when its
	// config leaves it zero.
	DefaultMaxTopics = 20
)

// maxOverflowTopics bounds the set of distinct topics an overflow group
// remembers, only to say "on 57 other topics"; past it the text says "1000+".
const maxOverflowTopics = 1000

// AggregatorConfig configures an Aggregator. Zero values mean the defaults.
type AggregatorConfig struct {
	// Window is how long alerts of one kind and topic are gathered into one
	// summary. Default 1 minute (DefaultWindow).
	Window time.Duration
	// MaxTopics bounds how many topics of one kind have a group of their own
	// at a time. Alerts on further topics go into one "other topics" group
	// of their kind, which only ever sends summaries, so bad input naming
	// thousands of topics cannot turn into thousands of messages. Alerts
	// without a topic are not counted. Default 20 (DefaultMaxTopics).
	MaxTopics int
	// Now tells the time; tests inject a fake clock. Default time.Now.
	Now func() time.Time
}

// Aggregator is an Alerter that turns bursts into few messages. It groups
// alerts by kind, outbox and topic:
//
//   - The first alert of a quiet group is forwarded at once, because the
//     first sign of an outage or a poison row is what an operator needs soon.
//   - Further alerts of the group within Window are only counted. When the
//     window ends, one summary is forwarded ("37 rows escalated on topic X in
//     the last minute; first alert: …"), covering every alert of the window
//     including the one already sent, and a new window starts.
//   - While alerts keep coming, each window ends with a summary and nothing is
//     forwarded at once; a window without alerts ends the group, so the next
//     alert is again forwarded at once.
//
// Forwarding happens on the goroutine that calls Raise, Flush or Run, so the
// downstream sinks must not block (Log and Webhook do not).
//
// Run sends summaries when their windows end; without it they only go out
// when the next alert of their group arrives or on Flush.
type Aggregator struct {
	window    time.Duration
	maxTopics int
	now       func() time.Time
	sink      Alerter
	// wake tells Run that a group opened, so it can set its timer to the new
	// window's end instead of polling.
	wake chan struct{}

	mu     sync.Mutex
	groups map[groupKey]*group
	topics map[Kind]int // groups with a topic per kind, for MaxTopics
}

var _ Alerter = (*Aggregator)(nil)

// NewAggregator returns an Aggregator that forwards to sinks. Call Run to
// have summaries sent when their windows end.
func NewAggregator(cfg AggregatorConfig, sinks ...Alerter) *Aggregator {
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.MaxTopics <= 0 {
		cfg.MaxTopics = DefaultMaxTopics
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var sink Alerter = Fanout(slices.Clone(sinks))
	if len(sinks) == 1 {
		sink = sinks[0]
	}
	return &Aggregator{
		window:    cfg.Window,
		maxTopics: cfg.MaxTopics,
		now:       cfg.Now,
		sink:      sink,
		wake:      make(chan struct{}, 1),
		groups:    map[groupKey]*group{},
		topics:    map[Kind]int{},
	}
}

type groupKey struct {
	kind     Kind
	outbox   string
	topic    string
	overflow bool // alerts of kind on topics past MaxTopics
}

// group is one kind and topic's current window.
type group struct {
	start     time.Time
	events    int // alerts in this window
	rows      int // sum of their Counts, each at least 1
	forwarded int // alerts of this window already forwarded at once (0 or 1)
	first     Alert
	topics    map[string]struct{} // overflow groups only
}

func (g *group) add(k groupKey, a Alert) {
	if g.events == 0 {
		g.first = a
	}
	g.events++
	g.rows += max(a.Count, 1)
	if k.overflow && len(g.topics) < maxOverflowTopics {
		if g.topics == nil {
			g.topics = map[string]struct{}{}
		}
		g.topics[a.Topic] = struct{}{}
	}
}

// Raise forwards a at once if its group is quiet and counts it otherwise.
func (ag *Aggregator) Raise(ctx context.Context, a Alert) {
	now := ag.now()
	if a.At.IsZero() {
		a.At = now
	}
	var out []Alert
	immediate := false

	ag.mu.Lock()
	k := groupKey{kind: a.Kind, outbox: a.Outbox, topic: a.Topic}
	g := ag.current(k, now, &out)
	if g == nil && a.Topic != "" && ag.topics[a.Kind] >= ag.maxTopics {
		k = groupKey{kind: a.Kind, outbox: a.Outbox, overflow: true}
		g = ag.current(k, now, &out)
	}
	if g == nil {
		g = &group{start: now}
		if !k.overflow {
			g.forwarded = 1
			immediate = true
			if k.topic != "" {
				ag.topics[k.kind]++
			}
		}
		ag.groups[k] = g
		select {
		case ag.wake <- struct{}{}:
		default:
		}
	}
	g.add(k, a)
	ag.mu.Unlock()

	if immediate {
		out = append(out, a)
	}
	for _, o := range out {
		ag.sink.Raise(ctx, o)
	}
}

// current returns k's group, first ending its window if it is due (Run may
// be late or not running), in which case a summary may be appended to out.
// It returns nil when k has no open group.
func (ag *Aggregator) current(k groupKey, now time.Time, out *[]Alert) *group {
	g := ag.groups[k]
	if g == nil || now.Before(g.start.Add(ag.window)) {
		return g
	}
	if s, ok := ag.roll(k, g, now); ok {
		*out = append(*out, s)
	}
	return ag.groups[k]
}

// roll ends g's window at now. With alerts not yet forwarded it returns their
// summary and starts the next window, so a steady stream gets one message
// per window. Without, or when a whole window has gone by since this one
// ended, the group is closed and the next alert is forwarded at once.
// Callers hold mu.
func (ag *Aggregator) roll(k groupKey, g *group, now time.Time) (Alert, bool) {
	pending := g.events > g.forwarded
	var s Alert
	if pending {
		s = g.summary(k, now)
	}
	if !pending || !now.Before(g.start.Add(2*ag.window)) {
		delete(ag.groups, k)
		if !k.overflow && k.topic != "" {
			ag.topics[k.kind]--
		}
		return s, pending
	}
	*g = group{start: now}
	return s, true
}

// flushDue ends every window that is due at the Aggregator's clock, forwards
// the summaries, and returns when the next window ends (zero if none is open).
func (ag *Aggregator) flushDue(ctx context.Context) time.Time {
	now := ag.now()
	var out []Alert
	var next time.Time

	ag.mu.Lock()
	for _, k := range ag.sortedKeys() {
		g := ag.groups[k]
		if !now.Before(g.start.Add(ag.window)) {
			if s, ok := ag.roll(k, g, now); ok {
				out = append(out, s)
			}
			if g = ag.groups[k]; g == nil {
				continue
			}
		}
		if end := g.start.Add(ag.window); next.IsZero() || end.Before(next) {
			next = end
		}
	}
	ag.mu.Unlock()

	for _, o := range out {
		ag.sink.Raise(ctx, o)
	}
	return next
}

// Flush forwards a summary for every group with alerts not yet forwarded,
// whether or not its window has ended. Run calls it on shutdown so counted
// alerts are not lost; groups stay open, so what follows is still limited to
// one summary per window.
func (ag *Aggregator) Flush(ctx context.Context) {
	now := ag.now()
	var out []Alert
	ag.mu.Lock()
	for _, k := range ag.sortedKeys() {
		g := ag.groups[k]
		if g.events > g.forwarded {
			out = append(out, g.summary(k, now))
			*g = group{start: now}
		}
	}
	ag.mu.Unlock()
	for _, o := range out {
		ag.sink.Raise(ctx, o)
	}
}

// sortedKeys gives summaries a stable order, which makes the log and the
// channel easier to read than map order. Callers hold mu.
func (ag *Aggregator) sortedKeys() []groupKey {
	keys := make([]groupKey, 0, len(ag.groups))
	for k := range ag.groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b groupKey) int {
		if c := cmp.Compare(a.kind, b.kind); c != 0 {
			return c
		}
		if c := cmp.Compare(a.outbox, b.outbox); c != 0 {
			return c
		}
		if a.overflow != b.overflow {
			if a.overflow {
				return 1
			}
			return -1
		}
		return cmp.Compare(a.topic, b.topic)
	})
	return keys
}

// Run sends each summary when its window ends. It blocks until ctx ends,
// then flushes what is still counted (with ctx's values but not its
// cancellation, so the sinks still accept it) and returns nil: shutdown is
// not an error. Run at most once at a time.
func (ag *Aggregator) Run(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var fire <-chan time.Time
		if next := ag.flushDue(ctx); !next.IsZero() {
			// The timer runs on the wall clock while windows are measured on
			// ag.now; in production they are the same clock, and a fake
			// clock in tests only makes the wait longer or shorter, never
			// skips a summary: the loop re-checks on every wake.
			timer.Reset(max(next.Sub(ag.now()), time.Millisecond))
			fire = timer.C
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			ag.Flush(context.WithoutCancel(ctx))
			return nil
		case <-ag.wake:
		case <-fire:
		}
	}
}

// summary describes g's window as one alert.
func (g *group) summary(k groupKey, now time.Time) Alert {
	// Rows escalated add up; for outage and lag alerts Count (if set) is a
	// level, not a flow, so the number that means something is how many
	// times it was raised.
	n := g.events
	if k.kind == KindEscalated {
		n = g.rows
	}
	var b strings.Builder
	switch k.kind {
	case KindEscalated:
		fmt.Fprintf(&b, "%d %s escalated", n, plural(n, "row", "rows"))
	case KindOutage:
		fmt.Fprintf(&b, "%d Kafka outage %s", n, plural(n, "alert", "alerts"))
	case KindLag:
		fmt.Fprintf(&b, "%d delivery lag %s", n, plural(n, "alert", "alerts"))
	default:
		fmt.Fprintf(&b, "%d %s %s", n, k.kind, plural(n, "alert", "alerts"))
	}
	switch {
	case k.overflow:
		t := fmt.Sprint(len(g.topics))
		if len(g.topics) >= maxOverflowTopics {
			t += "+"
		}
		fmt.Fprintf(&b, " on %s other %s", t, plural(len(g.topics), "topic", "topics"))
	case k.topic != "":
		fmt.Fprintf(&b, " on topic %s", k.topic)
	}
	fmt.Fprintf(&b, " in the last %s; first alert", span(now.Sub(g.start)))
	if k.overflow {
		fmt.Fprintf(&b, " (topic %s)", g.first.Topic)
	}
	fmt.Fprintf(&b, ": %s", g.first.Message)
	return Alert{Kind: k.kind, Outbox: k.outbox, Topic: k.topic, Message: b.String(), Count: n, At: now}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// span renders a window for a human: "minute", "5m", "1m30s".
func span(d time.Duration) string {
	d = max(d.Round(time.Second), time.Second)
	switch d {
	case time.Minute:
		return "minute"
	case time.Hour:
		return "hour"
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
