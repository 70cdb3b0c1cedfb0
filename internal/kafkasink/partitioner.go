package kafkasink

import (
	"context"
	"fmt"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
)

// partitionKey marks, in a record's Context, the partition its row chose
// (the partition column).
type partitionKey struct{}

// withPartition is the Context of a record whose row chose partition p.
func withPartition(p int32) context.Context {
	return context.WithValue(context.Background(), partitionKey{}, p)
}

// chosenPartition returns the partition r's row chose, if it chose one.
func chosenPartition(r *kgo.Record) (int32, bool) {
	if r.Context == nil {
		return 0, false
	}
	p, ok := r.Context.Value(partitionKey{}).(int32)
	return p, ok
}

// rowPartitioner puts a record where its row asked (see withPartition) and
// leaves every other record to the partitioner it wraps, the Java client's.
// A chosen partition requires consistency: the client then offers every
// partition of the topic, in partition order, and never moves the record
// to another one while its partition is down.
type rowPartitioner struct{ kgo.Partitioner }

func (p rowPartitioner) ForTopic(topic string) kgo.TopicPartitioner {
	return rowTopicPartitioner{p.Partitioner.ForTopic(topic)}
}

// rowTopicPartitioner implements the optional interfaces of the wrapped
// partitioner (kgo.UniformBytesPartitioner's) by delegating to them, so
// the client treats it as it would the wrapped one.
type rowTopicPartitioner struct{ kgo.TopicPartitioner }

var (
	_ kgo.TopicBackupPartitioner     = rowTopicPartitioner{}
	_ kgo.TopicPartitionerOnNewBatch = rowTopicPartitioner{}
)

func (t rowTopicPartitioner) RequiresConsistency(r *kgo.Record) bool {
	if _, ok := chosenPartition(r); ok {
		return true
	}
	return t.TopicPartitioner.RequiresConsistency(r)
}

// Partition returns the row's partition even when it is out of range (n
// or more): the client then fails the record alone, and the relay checks
// the topic again (see partitionRefused).
func (t rowTopicPartitioner) Partition(r *kgo.Record, n int) int {
	if p, ok := chosenPartition(r); ok {
		return int(p)
	}
	return t.TopicPartitioner.Partition(r, n)
}

func (t rowTopicPartitioner) PartitionByBackup(r *kgo.Record, n int, it kgo.TopicBackupIter) int {
	if p, ok := chosenPartition(r); ok {
		return int(p)
	}
	if b, ok := t.TopicPartitioner.(kgo.TopicBackupPartitioner); ok {
		return b.PartitionByBackup(r, n, it)
	}
	return t.TopicPartitioner.Partition(r, n)
}

func (t rowTopicPartitioner) OnNewBatch() {
	if o, ok := t.TopicPartitioner.(kgo.TopicPartitionerOnNewBatch); ok {
		o.OnNewBatch()
	}
}

// partitionChoiceRefused tells whether err is the client refusing a
// partition its partitioner chose: one the client's metadata of the topic
// does not have. franz-go reports it only as text ("invalid record
// partitioning choice of P from N available"), before any broker sees the
// record.
func partitionChoiceRefused(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "invalid record partitioning choice")
}

// partitionRefused explains a record the client refused because the
// partition its row chose is not in the client's metadata. The client's
// metadata may be older than the topic: the relay reads the partition
// count from the cluster. If the topic has the partition now, the client is
// told to refresh its metadata and the row waits, with no attempt spent,
// like a row whose partition is briefly unknown; if it still does not, the
// row is escalated with the topic's partition count. When the cluster
// cannot be asked, the row waits too (an outage).
func (s *Sink) partitionRefused(ctx context.Context, topic string, p int32, err error) error {
	n, cerr := s.partitionCount(ctx, topic)
	switch {
	case cerr != nil:
		return partitionUnknownError{fmt.Errorf("partition %d of topic %s is not in the client's metadata, and the topic could not be read (%v): %w", p, topic, cerr, err)}
	case p < n:
		s.client.ForceMetadataRefresh()
		return partitionUnknownError{fmt.Errorf("topic %s has %d partitions now, more than the client knew: the row waits for its metadata: %w", topic, n, err)}
	default:
		return badRow("partition %d does not exist: topic %s has %d partitions (0 to %d), read just now from the cluster; "+
			"fix the row's partition (NULL partitions by key) or add partitions to the topic, then requeue it", p, topic, n, n-1)
	}
}
