package kafkasink

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
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

// TopicRecheck is how long a topic's verdict is trusted before the relay
// reads its settings again; topicRetry, after the check itself failed.
const (
	TopicRecheck = time.Hour
	topicRetry   = 30 * time.Second
)

// topicVerdict is what the relay last read of a topic's settings.
type topicVerdict struct {
	checked  time.Time
	problems []string // empty: durable, or not known
	failed   bool     // the check could not be made
	// maxBytes is the topic's max.message.bytes; 0 when not known.
	maxBytes int32
	// oldest is how old a record's timestamp may be for the topic to take
	// it (see topicConfig.oldest); 0: any age, or not known.
	oldest time.Duration
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
	return (!v.failed && age >= TopicRecheck) || (v.failed && age >= topicRetry)
}

// topicEntry is the relay's knowledge of one topic. Sink.topicsMu guards
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
	// used is the entry's place in Sink.topicsUsed, most recent first.
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
// TopicCheckTimeout): an oversize row must be caught before it reaches a
// batch, and the client told the topic's max.message.bytes before it builds
// one. Batches of the same topic wait for that one check, other topics do
// not. Later checks (hourly, or every topicRetry after a failed one) run in
// the background and the batch goes on with the verdict it has: holding
// every batch of the topic for an admin request that may take seconds, in
// an outage, would only add latency, and the settings they refresh rarely
// change. A check that fails (unknown topic, no permission to describe
// configs) reports nothing: the produce will tell.
func (s *Sink) topicSettings(ctx context.Context, topic string) topicVerdict {
	s.topicsMu.Lock()
	e, known := s.topics[topic]
	if !known {
		e = &topicEntry{ready: make(chan struct{})}
		s.topics[topic] = e
		e.used = s.topicsUsed.PushFront(topic)
		s.forgetTopics()
	} else {
		s.topicsUsed.MoveToFront(e.used)
	}
	s.topicsMu.Unlock()
	if !known {
		s.checkTopicInto(ctx, topic, e)
		close(e.ready)
	}
	select {
	case <-e.ready:
	case <-ctx.Done():
		return topicVerdict{} // shutting down: nothing known, fail open
	}
	s.topicsMu.Lock()
	v := e.verdict
	if e.tooLarge {
		v.fits = max(e.fits, 1)
	}
	v.grown = e.grown
	refresh := !e.refreshing && v.due(time.Now())
	if refresh {
		e.refreshing = true
	}
	s.topicsMu.Unlock()
	if refresh {
		s.refreshTopic(ctx, topic, e)
	}
	return v
}

// forgetTopics drops the least recently used topics past s.maxTopics,
// except those whose check is running. s.topicsMu must be held.
func (s *Sink) forgetTopics() {
	for el := s.topicsUsed.Back(); el != nil && len(s.topics) > s.maxTopics; {
		prev := el.Prev()
		topic := el.Value.(string)
		e := s.topics[topic]
		select {
		case <-e.ready:
			if !e.refreshing {
				delete(s.topics, topic)
				s.topicsUsed.Remove(el)
				s.limits.forget(topic)
			}
		default:
		}
		el = prev
	}
}

// topicTook records that topic took a record batch of size bytes holding
// one row: its limit is at least that.
func (s *Sink) topicTook(topic string, size int) {
	s.topicsMu.Lock()
	defer s.topicsMu.Unlock()
	if e, ok := s.topics[topic]; ok && int32(size) > e.fits {
		e.fits = int32(size)
	}
}

// topicGroupTaken records that topic took a group of n bytes of records
// whole, while its limit is unknown: the next groups may be twice as large.
func (s *Sink) topicGroupTaken(topic string, n int) {
	s.topicsMu.Lock()
	defer s.topicsMu.Unlock()
	if e, ok := s.topics[topic]; ok && !e.tooLarge {
		e.grown = max(e.grown, int32(min(2*n, defaultBatchMax)))
	}
}

// topicTooLarge records that topic rejected a record batch as too large.
func (s *Sink) topicTooLarge(topic string) {
	s.topicsMu.Lock()
	defer s.topicsMu.Unlock()
	if e, ok := s.topics[topic]; ok {
		e.tooLarge = true
	}
}

// knownVerdict returns what the relay last read of topic's settings
// (nothing, if it has not), without checking it: a retry alone holds every
// other batch out of the client and must not wait for an admin request.
func (s *Sink) knownVerdict(topic string) topicVerdict {
	s.topicsMu.Lock()
	defer s.topicsMu.Unlock()
	if e, ok := s.topics[topic]; ok {
		return e.verdict
	}
	return topicVerdict{}
}

// refreshTopic checks topic again in the background. Run waits for it
// before returning; the check's own timeout bounds it.
func (s *Sink) refreshTopic(ctx context.Context, topic string, e *topicEntry) {
	s.refreshes.Add(1)
	go func() {
		defer s.refreshes.Done()
		s.checkTopicInto(context.WithoutCancel(ctx), topic, e)
		s.topicsMu.Lock()
		e.refreshing = false
		s.topicsMu.Unlock()
	}()
}

// TopicCheckTimeout bounds one check of a topic's settings. A batch's
// transaction waits for it, silent, on the batch's first use of a topic.
const TopicCheckTimeout = 5 * time.Second

// checkTopicInto reads topic's settings into e, tells the Kafka client the
// topic's max.message.bytes, and, when the topic is newly found unsafe
// (unless durability checks are off), logs it and tells Options.NotDurable.
func (s *Sink) checkTopicInto(ctx context.Context, topic string, e *topicEntry) {
	if s.beforeTopicCheck != nil {
		s.beforeTopicCheck(topic)
	}
	set, err := s.checkTopicWithin(ctx, topic, TopicCheckTimeout)
	problems, maxBytes := set.problems, set.maxBytes
	v := topicVerdict{checked: time.Now(), problems: problems, failed: err != nil, maxBytes: maxBytes, oldest: set.oldest}
	s.topicsMu.Lock()
	prev := e.verdict
	e.verdict = v
	s.topicsMu.Unlock()
	if maxBytes > 0 {
		s.limits.set(topic, maxBytes)
	}
	if err != nil {
		// A failed check during an outage must not turn into escalated
		// rows, so no row is refused for it; but the topic's limit is
		// unknown, and its records go to the client in small groups
		// (groupBudget) until it is known. Strict mode says so loudly.
		level := slog.LevelDebug
		if s.opts.Durability == DurabilityStrict {
			level = slog.LevelWarn
		}
		s.logger.Log(ctx, level, "topic_check_failed", "topic", topic, "error", err)
		return
	}
	if s.opts.Durability != DurabilityOff && len(problems) > 0 && len(prev.problems) == 0 {
		reason := strings.Join(problems, "; ")
		s.logger.Warn("topic_not_durable", "topic", topic, "problems", reason, "strict", s.opts.Durability == DurabilityStrict)
		if s.opts.NotDurable != nil {
			s.opts.NotDurable(ctx, topic, reason)
		}
	}
}

// checkTopicWithin runs checkTopic but gives up after timeout or when ctx
// ends: a broker that accepts connections and never answers can hold an
// admin request past its context, and the batch must not wait for it.
func (s *Sink) checkTopicWithin(ctx context.Context, topic string, timeout time.Duration) (topicConfig, error) {
	// Cancelled when this returns, not when the check does: the check
	// ending must not look like a timeout to the select below.
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	type result struct {
		set topicConfig
		err error
	}
	done := make(chan result, 1)
	go func() {
		set, err := checkTopic(ctx, kadm.NewClient(s.client), topic)
		done <- result{set, err}
	}()
	select {
	case res := <-done:
		return res.set, res.err
	case <-ctx.Done():
		return topicConfig{}, fmt.Errorf("topic %s: %w", topic, ctx.Err())
	}
}

// partitionCount reads how many partitions topic has now, from the
// cluster (see TopicMetadata).
func (s *Sink) partitionCount(ctx context.Context, topic string) (int32, error) {
	ctx, cancel := context.WithTimeout(ctx, TopicCheckTimeout)
	defer cancel()
	t, err := TopicMetadata(ctx, s.client, topic)
	switch {
	case err != nil:
		return 0, err
	case t == nil:
		return 0, fmt.Errorf("topic %s: not in the metadata answer", topic)
	}
	if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
		return 0, fmt.Errorf("topic %s: %w", topic, err)
	}
	return int32(len(t.Partitions)), nil
}

// TopicMetadata asks the cluster for topic's metadata: a Metadata request
// of its own, since kadm answers from the client's cached metadata
// (kgo.Client.RequestCachedMetadata), which may predate partitions added to
// the topic or a topic the brokers lost. It returns nil, and no error, when
// the answer does not mention the topic; the topic's ErrorCode is the
// caller's to read.
func TopicMetadata(ctx context.Context, client *kgo.Client, topic string) (*kmsg.MetadataResponseTopic, error) {
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, client)
	if err != nil {
		return nil, err
	}
	for i := range resp.Topics {
		if t := resp.Topics[i].Topic; t != nil && *t == topic {
			return &resp.Topics[i], nil
		}
	}
	return nil, nil
}

// topicConfig is what checkTopic reads of a topic.
type topicConfig struct {
	problems []string // why the topic is not durable; empty: it is
	maxBytes int32    // max.message.bytes; 0: not known
	// oldest is the age past which the topic refuses a record's timestamp
	// with INVALID_TIMESTAMP: message.timestamp.before.max.ms (Kafka 3.6)
	// or message.timestamp.difference.max.ms, the smaller; 0 when neither
	// bounds it (the default) or the topic stamps records itself
	// (message.timestamp.type LogAppendTime).
	oldest time.Duration
}

// checkTopic reads a topic's replication factor, min.insync.replicas,
// unclean.leader.election.enable, max.message.bytes and timestamp bounds.
func checkTopic(ctx context.Context, adm *kadm.Client, topic string) (set topicConfig, err error) {
	details, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return set, err
	}
	d, ok := details[topic]
	if !ok || d.Err != nil {
		return set, fmt.Errorf("topic %s: %w", topic, d.Err)
	}
	rf := -1
	for _, p := range d.Partitions {
		if rf < 0 || len(p.Replicas) < rf {
			rf = len(p.Replicas)
		}
	}
	var problems []string
	if rf >= 0 && rf < 3 {
		problems = append(problems, fmt.Sprintf("replication factor %d < 3", rf))
	}
	configs, err := adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return set, err
	}
	rc, err := configs.On(topic, nil)
	if err != nil || rc.Err != nil {
		return set, fmt.Errorf("describe configs of %s: %v %v", topic, err, rc.Err)
	}
	logAppendTime := false
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
				set.maxBytes = int32(n)
			}
		case "message.timestamp.before.max.ms", "message.timestamp.difference.max.ms":
			// Long.MAX_VALUE, the default, bounds nothing; neither does
			// a bound past what a Duration holds.
			if ms, err := strconv.ParseInt(*c.Value, 10, 64); err == nil && ms > 0 && ms < math.MaxInt64/int64(time.Millisecond) {
				if d := time.Duration(ms) * time.Millisecond; set.oldest == 0 || d < set.oldest {
					set.oldest = d
				}
			}
		case "message.timestamp.type":
			logAppendTime = *c.Value == "LogAppendTime"
		}
	}
	if logAppendTime {
		set.oldest = 0
	}
	set.problems = problems
	return set, nil
}
