// Package kafkasink is the relay's Kafka side: it builds the client
// (NewClient), turns claimed rows into records, produces them, checks the
// topics' settings, and says whose fault each failure is (Classify). The
// engine in package relay decides what to do with the answers: which rows
// go in which wave, which spend an attempt, which are escalated.
package kafkasink

import (
	"container/list"
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/semaphore"

	"github.com/outboxrelay/relay/internal/pgstore"
)

// row is one claimed outbox row.
type row = pgstore.Row

// Options are what a Sink needs from the relay that owns it.
type Options struct {
	// ProduceTimeout bounds how long the client may hold a record
	// unanswered, retrying, from the moment the sink hands it over (see
	// Sink.produceWithin); 0 means DefaultProduceTimeout.
	ProduceTimeout time.Duration
	// BatchTimeout bounds each call of Produce or RetryAlone as a whole
	// (see Sink.giveUpAfter).
	BatchTimeout time.Duration
	// Durability is what to do about topics that can lose acknowledged
	// records.
	Durability Durability
	// Logger receives the sink's logs; nil discards them.
	Logger *slog.Logger
	// Refuse, when set, returns why a row must not be produced at all, or
	// nil. Its error is classified like a produce error.
	Refuse func(pgstore.Row) error
	// StallAfter is how long a produce may wait without a single answer
	// before Stalled is called, and then every StallAfter again.
	StallAfter time.Duration
	Stalled    func(since time.Time)
	// HeaderReplaced hears of each application header the relay's own
	// replaced, after it is logged.
	HeaderReplaced func(topic string)
	// NotDurable hears of a topic newly found unsafe, after it is logged
	// (not when Durability is DurabilityOff).
	NotDurable func(ctx context.Context, topic, reason string)
	// BrokerFailing hears at once of a broker's first failure after a
	// success, for a client made by NewClient (see brokerWatch).
	BrokerFailing func(cause error)
}

// Sink produces one relay's rows with a client. Batches in flight use it
// concurrently. The caller keeps ownership of the client.
type Sink struct {
	client *kgo.Client
	opts   Options
	logger *slog.Logger

	// topicsMu guards topics, what the sink knows of topics' settings,
	// shared by the batches in flight. refreshes counts the background
	// checks running.
	topicsMu   sync.Mutex
	topics     map[string]*topicEntry
	topicsUsed *list.List // of topic names, most recently used first
	maxTopics  int        // maxTopicEntries, or less in tests
	refreshes  sync.WaitGroup
	// limits tells the client each topic's max.message.bytes; watch
	// tells the sink of connections the client could not open. Both are
	// nil for a client NewClient did not make.
	limits *topicLimits
	watch  *brokerWatch
	// gate keeps retries alone alone (see gateAll).
	gate *semaphore.Weighted
	// beforeTopicCheck, for tests, runs as a check of a topic's settings
	// starts.
	beforeTopicCheck func(topic string)
}

// New returns a sink that produces with client, which should come from
// NewClient (it pins acks=all and idempotence).
func New(client *kgo.Client, opts Options) *Sink {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.ProduceTimeout <= 0 {
		opts.ProduceTimeout = DefaultProduceTimeout
	}
	s := &Sink{
		client:     client,
		opts:       opts,
		logger:     opts.Logger,
		topics:     map[string]*topicEntry{},
		topicsUsed: list.New(),
		maxTopics:  maxTopicEntries,
		gate:       semaphore.NewWeighted(gateAll),
	}
	if st := stateOf(client); st != nil {
		s.limits, s.watch = st.limits, st.watch
		if opts.BrokerFailing != nil {
			s.watch.subscribe(opts.BrokerFailing)
		}
	}
	return s
}

// LastFailure returns why the client's latest failure to connect to a
// broker or to produce to it happened, while that broker has not recovered;
// nil if none is failing. The client retries those silently, so this says
// more than "no answer".
func (s *Sink) LastFailure() error { return s.watch.lastCause() }

// WaitRefreshes waits for the background checks of topics' settings. Their
// own timeout bounds them.
func (s *Sink) WaitRefreshes() { s.refreshes.Wait() }
