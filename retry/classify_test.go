package retry

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

type badRow struct{}

func (badRow) Error() string  { return "headers must be an object" }
func (badRow) RowFatal() bool { return true }

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
		{"own validation", fmt.Errorf("row 7: %w", badRow{}), RowFatal},
		{"request timed out", kerr.RequestTimedOut, RowRetriable},
		{"not enough replicas", kerr.NotEnoughReplicas, RowRetriable},
		{"unknown topic", kerr.UnknownTopicOrPartition, RowRetriable},
		{"record timeout", kgo.ErrRecordTimeout, RowRetriable},
		{"record retries", kgo.ErrRecordRetries, RowRetriable},
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
