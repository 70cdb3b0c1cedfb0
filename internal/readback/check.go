package readback

// Checker checks, one record at a time, the delivery promises a consumer
// relies on, and counts what it saw:
//
//   - per topic and key, the first delivery of each row comes after the
//     first delivery of every earlier row (by outbox id) of that key: a row
//     first delivered after a later one is an order violation;
//   - a key stays in one partition;
//   - every further delivery of a row is a duplicate, and a row never
//     delivered is missing (see Deliveries).
//
// Records must be added in the order of their partition.
type Checker struct {
	// Errorf, if set, is told each order violation and split key.
	Errorf func(format string, args ...any)
	// Deliveries counts the records of each row, by outbox id.
	Deliveries map[int64]int
	// Duplicates counts the records of rows delivered before.
	Duplicates int
	// OrderViolations counts the rows first delivered after a later row
	// of their key.
	OrderViolations int
	// SplitKeys counts the first deliveries in another partition than
	// their key's earlier ones.
	SplitKeys int

	lastOfKey      map[string]int64 // topic+key → highest id first delivered
	partitionOfKey map[string]int32
}

// NewChecker returns a Checker that has seen nothing.
func NewChecker() *Checker {
	return &Checker{Deliveries: map[int64]int{}, lastOfKey: map[string]int64{}, partitionOfKey: map[string]int32{}}
}

// Add counts a record of row id, in topic with key (nil: a row without a
// key, which has no order to keep), in partition. It reports whether it
// was the row's first delivery.
func (c *Checker) Add(id int64, topic string, key []byte, partition int32) (first bool) {
	c.Deliveries[id]++
	if c.Deliveries[id] > 1 {
		c.Duplicates++
		return false
	}
	if key == nil {
		return true
	}
	k := topic + "\x00" + string(key)
	if part, ok := c.partitionOfKey[k]; ok && part != partition {
		c.SplitKeys++
		c.errorf("key %q of %s is in partitions %d and %d", key, topic, part, partition)
	}
	c.partitionOfKey[k] = partition
	if last, ok := c.lastOfKey[k]; ok && id < last {
		c.OrderViolations++
		c.errorf("key %q of %s: row %d first delivered after row %d", key, topic, id, last)
		return true
	}
	c.lastOfKey[k] = id
	return true
}

// Distinct is how many rows were delivered at least once.
func (c *Checker) Distinct() int { return len(c.Deliveries) }

func (c *Checker) errorf(format string, args ...any) {
	if c.Errorf != nil {
		c.Errorf(format, args...)
	}
}
