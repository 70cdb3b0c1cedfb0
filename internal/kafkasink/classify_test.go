package kafkasink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

type rowVerdict struct{}

func (rowVerdict) Error() string  { return "headers must be an object" }
func (rowVerdict) RowFatal() bool { return true }

type knownOutage struct{ error }

func (knownOutage) Outage() bool    { return true }
func (e knownOutage) Unwrap() error { return e.error }

func TestClassify(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		err  error
		want Kind
	}{
		{"message too large", kerr.MessageTooLarge, RowFatal},
		{"wrapped too large", fmt.Errorf("produce: %w", kerr.MessageTooLarge), RowFatal},
		{"invalid topic", kerr.InvalidTopicException, RowFatal},
		{"invalid record", kerr.InvalidRecord, RowFatal},
		{"topic authorization", kerr.TopicAuthorizationFailed, RowFatal},
		{"own validation", fmt.Errorf("row 7: %w", rowVerdict{}), RowFatal},
		{"request timed out", kerr.RequestTimedOut, Outage},
		{"not enough replicas", kerr.NotEnoughReplicas, Outage},
		{"not enough replicas after append", kerr.NotEnoughReplicasAfterAppend, Outage},
		{"not leader", kerr.NotLeaderForPartition, Outage},
		{"leader not available", kerr.LeaderNotAvailable, Outage},
		{"wrapped not enough replicas", fmt.Errorf("produce: %w", kerr.NotEnoughReplicas), Outage},
		{"clock skew", kerr.InvalidTimestamp, Outage},
		{"unknown topic", kerr.UnknownTopicOrPartition, RowRetriable},
		{"unknown server error", kerr.UnknownServerError, RowRetriable},
		{"out of order sequence", kerr.OutOfOrderSequenceNumber, Outage},
		{"known to be an outage", fmt.Errorf("topic exists: %w", knownOutage{kerr.UnknownTopicOrPartition}), Outage},
		{"record timeout", kgo.ErrRecordTimeout, Outage},
		{"record retries", kgo.ErrRecordRetries, Outage},
		{"unknown error", errors.New("something odd"), RowRetriable},
		{"sasl failed", kerr.SaslAuthenticationFailed, Outage},
		{"cluster authorization", kerr.ClusterAuthorizationFailed, Outage},
		{"client closed", kgo.ErrClientClosed, Outage},
		{"context canceled", context.Canceled, Outage},
		{"connection refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, Outage},
		{"connection reset", fmt.Errorf("read: %w", syscall.ECONNRESET), Outage},
	}
	for _, c := range cases {
		if got := Classify(c.err); got != c.want {
			t.Errorf("%s: Classify(%v) = %v, want %v", c.name, c.err, got, c.want)
		}
	}
}

func TestRejectsBatch(t *testing.T) {
	t.Parallel()
	for _, err := range []error{kerr.MessageTooLarge, fmt.Errorf("%w (uncompressed_bytes=9)", kerr.MessageTooLarge),
		kerr.InvalidRecord, kerr.CorruptMessage, kerr.PolicyViolation, kerr.RecordListTooLarge} {
		if !RejectsBatch(err) {
			t.Errorf("RejectsBatch(%v) = false, want true: the whole batch gets it", err)
		}
	}
	for _, err := range []error{kerr.InvalidTopicException, kerr.TopicAuthorizationFailed, kerr.NotEnoughReplicas,
		kerr.InvalidTimestamp, rowVerdict{}, errors.New("odd")} {
		if RejectsBatch(err) {
			t.Errorf("RejectsBatch(%v) = true, want false", err)
		}
	}
}
