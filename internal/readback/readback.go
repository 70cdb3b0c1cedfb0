// Package readback reads back what the relay produced: a consumer of
// topics from their first record, the outbox headers of its records, and
// the check of what consumers are promised (Checker). The tests and
// `relay bench` share it, so both hold the relay to one reading of its
// guarantees; it does not depend on package testing, as the bench is not a
// test.
package readback

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/relay"
)

// Reader consumes topics from their first record. It is a kgo client
// (Ping, Close, ...) with the polls the readers of the relay's output need.
type Reader struct {
	*kgo.Client
}

// New returns a Reader of topics; opts add to its client's options (e.g.
// kgo.FetchMaxWait, for a reader that waits for records to land).
func New(brokers, topics []string, opts ...kgo.Opt) (*Reader, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(brokers...),
		kgo.ConsumeTopics(topics...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	}, opts...)...)
	if err != nil {
		return nil, err
	}
	return &Reader{cl}, nil
}

// Poll returns the records of one fetch. Once ctx has ended, err is ctx's
// error (records that came with it are still returned); otherwise it is
// the fetch's errors, joined.
func (r *Reader) Poll(ctx context.Context) ([]*kgo.Record, error) {
	fs := r.PollFetches(ctx)
	if err := ctx.Err(); err != nil {
		return fs.Records(), err
	}
	var ferr error
	fs.EachError(func(topic string, p int32, err error) {
		ferr = errors.Join(ferr, fmt.Errorf("fetch %s/%d: %w", topic, p, err))
	})
	if ferr != nil {
		return nil, ferr
	}
	return fs.Records(), nil
}

// Read polls until done is true, handing each record to each, in order.
// done is asked before every poll, so a fetch is always handed over whole.
// It returns Poll's error, if any: ctx's once it ends.
func (r *Reader) Read(ctx context.Context, each func(*kgo.Record), done func() bool) error {
	for !done() {
		recs, err := r.Poll(ctx)
		if err != nil {
			return err
		}
		for _, rec := range recs {
			each(rec)
		}
	}
	return nil
}

// Header returns the value of rec's header name, and whether it has one.
func Header(rec *kgo.Record, name string) (string, bool) {
	for _, h := range rec.Headers {
		if h.Key == name {
			return string(h.Value), true
		}
	}
	return "", false
}

// Number is the decimal value of rec's header name.
func Number(rec *kgo.Record, name string) (int64, error) {
	v, ok := Header(rec, name)
	if !ok {
		return 0, fmt.Errorf("record %s/%d@%d has no %s header", rec.Topic, rec.Partition, rec.Offset, name)
	}
	return strconv.ParseInt(v, 10, 64)
}

// OutboxID is the row id rec carries in its outbox-id header.
func OutboxID(rec *kgo.Record) (int64, error) {
	return Number(rec, relay.HeaderOutboxID)
}
