package kafkasink

import "time"

// The methods below let the relay's tests reach into what the sink knows
// of topics; the relay itself does not use them.

// SetBeforeTopicCheck sets a function to run as each check of a topic's
// settings starts.
func (s *Sink) SetBeforeTopicCheck(f func(topic string)) { s.beforeTopicCheck = f }

// SetMaxTopics bounds the topics whose settings the sink keeps.
func (s *Sink) SetMaxTopics(n int) { s.maxTopics = n }

// TopicsKnown is how many topics' settings the sink keeps.
func (s *Sink) TopicsKnown() int {
	s.topicsMu.Lock()
	defer s.topicsMu.Unlock()
	return len(s.topics)
}

// TopicCheckedAt returns when topic's settings were last read.
func (s *Sink) TopicCheckedAt(topic string) time.Time {
	s.topicsMu.Lock()
	defer s.topicsMu.Unlock()
	return s.topics[topic].verdict.checked
}

// AgeTopicVerdict moves topic's last check d into the past, so its next use
// starts a refresh.
func (s *Sink) AgeTopicVerdict(topic string, d time.Duration) {
	s.topicsMu.Lock()
	defer s.topicsMu.Unlock()
	s.topics[topic].verdict.checked = s.topics[topic].verdict.checked.Add(-d)
}
