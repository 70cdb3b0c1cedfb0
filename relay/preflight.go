package relay

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/outboxrelay/relay/alert"
)

// Durability says what the relay does about topics whose broker settings
// can lose acknowledged records: replication factor below 3,
// min.insync.replicas below 2, or unclean leader election enabled.
type Durability int

const (
	// DurabilityOff checks nothing (the zero value, for tests and
	// embedders; the relay command defaults to DurabilityWarn).
	DurabilityOff Durability = iota
	// DurabilityWarn logs, counts and alerts once per topic, and produces.
	DurabilityWarn
	// DurabilityStrict also refuses to produce: the topic's rows are
	// escalated with the reason.
	DurabilityStrict
)

// topicRecheck is how long a topic's verdict is trusted before the relay
// reads its settings again; topicRetry, after the check itself failed.
const (
	topicRecheck = time.Hour
	topicRetry   = 30 * time.Second
)

// topicVerdict is what the relay last read of a topic's settings.
type topicVerdict struct {
	checked  time.Time
	problems []string // empty: durable, or not known
	failed   bool     // the check could not be made
	// maxBytes is the topic's max.message.bytes; 0 when not known.
	maxBytes int32
	// fits is, once the topic has rejected a record batch as too large,
	// the largest record batch of one row it has taken (at least 1): what
	// the relay knows of its limit when maxBytes is not known. 0 before
	// any rejection.
	fits int32
	// grown is, while the topic's limit is unknown and it rejected
	// nothing as too large, twice the bytes of the largest group of its
	// records it took whole (see unknownLimitGroup); at most the client's
	// default batch limit.
	grown int32
}

// due reports whether the verdict should be read again.
func (v topicVerdict) due(now time.Time) bool {
	age := now.Sub(v.checked)
	return (!v.failed && age >= topicRecheck) || (v.failed && age >= topicRetry)
}

// topicEntry is the relay's knowledge of one topic. Relay.topicsMu guards
// verdict and refreshing.
type topicEntry struct {
	// ready is closed once the first check has ended; verdict is valid
	// from then on.
	ready      chan struct{}
	verdict    topicVerdict
	refreshing bool  // a background check is running
	fits       int32 // the largest record batch of one row the topic took
	tooLarge   bool  // the topic rejected a record batch as too large
	grown      int32 // see topicVerdict.grown
	// used is the entry's place in Relay.topicsUsed, most recent first.
	used *list.Element
}

// maxTopicEntries bounds what the relay keeps of topics' settings. Topic
// names come from the rows, so an application that writes to ever new
// topics must not grow the relay without bound: past this many, the
// topics used least recently are forgotten (checked again if they come
// back).
const maxTopicEntries = 10_000

// topicSettings returns what the relay knows of topic's settings. Batches
// in flight call it concurrently.
//
// The first use of a topic blocks on a check (kadm, at most
// topicCheckTimeout): an oversize row must be caught before it reaches a
// batch, and the client told the topic's max.message.bytes before it builds
// one. Batches of the same topic wait for that one check, other topics do
// not. Later checks (hourly, or every topicRetry after a failed one) run in
// the background and the batch goes on with the verdict it has: holding
// every batch of the topic for an admin request that may take seconds, in
// an outage, would only add latency, and the settings they refresh rarely
// change. A check that fails (unknown topic, no permission to describe
// configs) reports nothing: the produce will tell.
func (r *Relay) topicSettings(ctx context.Context, topic string) topicVerdict {
	r.topicsMu.Lock()
	e, known := r.topics[topic]
	if !known {
		e = &topicEntry{ready: make(chan struct{})}
		r.topics[topic] = e
		e.used = r.topicsUsed.PushFront(topic)
		r.forgetTopics()
	} else {
		r.topicsUsed.MoveToFront(e.used)
	}
	r.topicsMu.Unlock()
	if !known {
		r.checkTopicInto(ctx, topic, e)
		close(e.ready)
	}
	select {
	case <-e.ready:
	case <-ctx.Done():
		return topicVerdict{} // shutting down: nothing known, fail open
	}
	r.topicsMu.Lock()
	v := e.verdict
	if e.tooLarge {
		v.fits = max(e.fits, 1)
	}
	v.grown = e.grown
	refresh := !e.refreshing && v.due(time.Now())
	if refresh {
		e.refreshing = true
	}
	r.topicsMu.Unlock()
	if refresh {
		r.refreshTopic(ctx, topic, e)
	}
	return v
}

// forgetTopics drops the least recently used topics past r.maxTopics,
// except those whose check is running. r.topicsMu must be held.
func (r *Relay) forgetTopics() {
	for el := r.topicsUsed.Back(); el != nil && len(r.topics) > r.maxTopics; {
		prev := el.Prev()
		topic := el.Value.(string)
		e := r.topics[topic]
		select {
		case <-e.ready:
			if !e.refreshing {
				delete(r.topics, topic)
				r.topicsUsed.Remove(el)
				r.limits.forget(topic)
			}
		default:
		}
		el = prev
	}
}

// topicTook records that topic took a record batch of size bytes holding
// one row: its limit is at least that.
func (r *Relay) topicTook(topic string, size int) {
	r.topicsMu.Lock()
	defer r.topicsMu.Unlock()
	if e, ok := r.topics[topic]; ok && int32(size) > e.fits {
		e.fits = int32(size)
	}
}

// topicGroupTaken records that topic took a group of n bytes of records
// whole, while its limit is unknown: the next groups may be twice as large.
func (r *Relay) topicGroupTaken(topic string, n int) {
	r.topicsMu.Lock()
	defer r.topicsMu.Unlock()
	if e, ok := r.topics[topic]; ok && !e.tooLarge {
		e.grown = max(e.grown, int32(min(2*n, defaultBatchMax)))
	}
}

// topicTooLarge records that topic rejected a record batch as too large.
func (r *Relay) topicTooLarge(topic string) {
	r.topicsMu.Lock()
	defer r.topicsMu.Unlock()
	if e, ok := r.topics[topic]; ok {
		e.tooLarge = true
	}
}

// knownVerdict returns what the relay last read of topic's settings
// (nothing, if it has not), without checking it: a retry alone holds every
// other batch out of the client and must not wait for an admin request.
func (r *Relay) knownVerdict(topic string) topicVerdict {
	r.topicsMu.Lock()
	defer r.topicsMu.Unlock()
	if e, ok := r.topics[topic]; ok {
		return e.verdict
	}
	return topicVerdict{}
}

// refreshTopic checks topic again in the background. Run waits for it
// before returning; the check's own timeout bounds it.
func (r *Relay) refreshTopic(ctx context.Context, topic string, e *topicEntry) {
	r.refreshes.Add(1)
	go func() {
		defer r.refreshes.Done()
		r.checkTopicInto(context.WithoutCancel(ctx), topic, e)
		r.topicsMu.Lock()
		e.refreshing = false
		r.topicsMu.Unlock()
	}()
}

// topicCheckTimeout bounds one check of a topic's settings.
const topicCheckTimeout = 5 * time.Second

// checkTopicInto reads topic's settings into e, tells the Kafka client the
// topic's max.message.bytes, and logs, counts and alerts when the topic is
// newly found unsafe (unless durability checks are off).
func (r *Relay) checkTopicInto(ctx context.Context, topic string, e *topicEntry) {
	if r.beforeTopicCheck != nil {
		r.beforeTopicCheck(topic)
	}
	problems, maxBytes, err := r.checkTopicWithin(ctx, topic, topicCheckTimeout)
	v := topicVerdict{checked: time.Now(), problems: problems, failed: err != nil, maxBytes: maxBytes}
	r.topicsMu.Lock()
	prev := e.verdict
	e.verdict = v
	r.topicsMu.Unlock()
	if maxBytes > 0 {
		r.limits.set(topic, maxBytes)
	}
	if err != nil {
		// A failed check during an outage must not turn into escalated
		// rows, so no row is refused for it; but the topic's limit is
		// unknown, and its records go to the client in small groups
		// (groupBudget) until it is known. Strict mode says so loudly.
		level := slog.LevelDebug
		if r.cfg.Durability == DurabilityStrict {
			level = slog.LevelWarn
		}
		r.logger.Log(ctx, level, "topic_check_failed", "topic", topic, "error", err)
		return
	}
	if r.cfg.Durability != DurabilityOff && len(problems) > 0 && len(prev.problems) == 0 {
		reason := strings.Join(problems, "; ")
		r.logger.Warn("topic_not_durable", "topic", topic, "problems", reason, "strict", r.cfg.Durability == DurabilityStrict)
		r.cfg.Metrics.topicNotDurable(topic)
		r.alerter.Raise(ctx, alert.Alert{
			Kind:    alert.KindDurability,
			Topic:   topic,
			Message: fmt.Sprintf("topic %s can lose acknowledged records: %s", topic, reason),
			At:      time.Now(),
		})
	}
}

// checkTopicWithin runs checkTopic but gives up after timeout or when ctx
// ends: a broker that accepts connections and never answers can hold an
// admin request past its context, and the batch must not wait for it.
func (r *Relay) checkTopicWithin(ctx context.Context, topic string, timeout time.Duration) ([]string, int32, error) {
	// Cancelled when this returns, not when the check does: the check
	// ending must not look like a timeout to the select below.
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		problems []string
		maxBytes int32
		err      error
	}
	done := make(chan result, 1)
	go func() {
		p, m, err := checkTopic(ctx, kadm.NewClient(r.kafka), topic)
		done <- result{p, m, err}
	}()
	select {
	case res := <-done:
		return res.problems, res.maxBytes, res.err
	case <-ctx.Done():
		return nil, 0, fmt.Errorf("topic %s: %w", topic, ctx.Err())
	}
}

// partitionCount reads how many partitions topic has now, from the
// cluster: a Metadata request of its own, since kadm answers from the
// client's cached metadata (kgo.Client.RequestCachedMetadata), which may
// predate partitions added to the topic.
func (r *Relay) partitionCount(ctx context.Context, topic string) (int32, error) {
	ctx, cancel := context.WithTimeout(ctx, topicCheckTimeout)
	defer cancel()
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, r.kafka)
	if err != nil {
		return 0, err
	}
	for _, t := range resp.Topics {
		if t.Topic != nil && *t.Topic == topic {
			if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
				return 0, fmt.Errorf("topic %s: %w", topic, err)
			}
			return int32(len(t.Partitions)), nil
		}
	}
	return 0, fmt.Errorf("topic %s: not in the metadata answer", topic)
}

// checkTopic reads a topic's replication factor, min.insync.replicas,
// unclean.leader.election.enable and max.message.bytes.
func checkTopic(ctx context.Context, adm *kadm.Client, topic string) (problems []string, maxBytes int32, err error) {
	details, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return nil, 0, err
	}
	d, ok := details[topic]
	if !ok || d.Err != nil {
		return nil, 0, fmt.Errorf("topic %s: %w", topic, d.Err)
	}
	rf := -1
	for _, p := range d.Partitions {
		if rf < 0 || len(p.Replicas) < rf {
			rf = len(p.Replicas)
		}
	}
	if rf >= 0 && rf < 3 {
		problems = append(problems, fmt.Sprintf("replication factor %d < 3", rf))
	}
	configs, err := adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return nil, 0, err
	}
	rc, err := configs.On(topic, nil)
	if err != nil || rc.Err != nil {
		return nil, 0, fmt.Errorf("describe configs of %s: %v %v", topic, err, rc.Err)
	}
	for _, c := range rc.Configs {
		if c.Value == nil {
			continue
		}
		switch c.Key {
		case "min.insync.replicas":
			if n, err := strconv.Atoi(*c.Value); err == nil && n < 2 {
				problems = append(problems, fmt.Sprintf("min.insync.replicas %d < 2", n))
			}
		case "unclean.leader.election.enable":
			if *c.Value == "true" {
				problems = append(problems, "unclean.leader.election.enable is true")
			}
		case "max.message.bytes":
			if n, err := strconv.ParseInt(*c.Value, 10, 32); err == nil && n > 0 {
				maxBytes = int32(n)
			}
		}
	}
	return problems, maxBytes, nil
}
