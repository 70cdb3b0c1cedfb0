package relay

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"

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

type topicVerdict struct {
	checked  time.Time
	problems []string // empty: durable, or not known
	failed   bool     // the check could not be made
}

// durabilityProblems returns what is unsafe about topic, reading its settings
// with kadm on first use and caching the verdict. A check that fails
// (unknown topic, no permission to describe configs) reports no problem: the
// produce will tell. Batches in flight call it concurrently.
func (r *Relay) durabilityProblems(ctx context.Context, topic string) []string {
	if r.cfg.Durability == DurabilityOff {
		return nil
	}
	// One check at a time: the batches in flight share the verdicts.
	r.topicsMu.Lock()
	defer r.topicsMu.Unlock()
	if v, ok := r.topics[topic]; ok {
		age := time.Since(v.checked)
		if (!v.failed && age < topicRecheck) || (v.failed && age < topicRetry) {
			return v.problems
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	problems, err := checkTopic(ctx, kadm.NewClient(r.kafka), topic)
	v := &topicVerdict{checked: time.Now(), problems: problems, failed: err != nil}
	prev := r.topics[topic]
	r.topics[topic] = v
	if err != nil {
		// Fail open: a failed check during an outage must not turn into
		// escalated rows. Strict mode says so loudly.
		level := slog.LevelDebug
		if r.cfg.Durability == DurabilityStrict {
			level = slog.LevelWarn
		}
		r.logger.Log(ctx, level, "durability_check_failed", "topic", topic, "error", err)
		return nil
	}
	if len(problems) > 0 && (prev == nil || len(prev.problems) == 0) {
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
	return problems
}

// checkTopic reads a topic's replication factor, min.insync.replicas and
// unclean.leader.election.enable.
func checkTopic(ctx context.Context, adm *kadm.Client, topic string) ([]string, error) {
	details, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return nil, err
	}
	d, ok := details[topic]
	if !ok || d.Err != nil {
		return nil, fmt.Errorf("topic %s: %v", topic, d.Err)
	}
	var problems []string
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
		return nil, err
	}
	rc, err := configs.On(topic, nil)
	if err != nil || rc.Err != nil {
		return nil, fmt.Errorf("describe configs of %s: %v %v", topic, err, rc.Err)
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
		}
	}
	return problems, nil
}
