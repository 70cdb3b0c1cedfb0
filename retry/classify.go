package retry

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Kind says whose fault a failed produce is, which decides what happens to
// the row.
type Kind int

const (
	// RowRetriable: this row failed, it may succeed later. Its attempts go
	// up and it is escalated past the threshold.
	RowRetriable Kind = iota
	// RowFatal: the row can never succeed as it is (too large, invalid
	// topic, invalid record, not authorised for its topic). It is escalated
	// at once: retrying would only waste attempts and hold back its key.
	RowFatal
	// Outage: Kafka as a whole is unreachable or refuses us (connections,
	// authentication). Not the row's fault: no attempt is spent.
	Outage
)

func (k Kind) String() string {
	switch k {
	case RowFatal:
		return "row_fatal"
	case Outage:
		return "outage"
	default:
		return "row_retriable"
	}
}

// RowFatalError is implemented by errors that mark a row as undeliverable as
// it is, such as headers that are not an object of strings. The relay's own
// validation errors implement it; Classify honours it.
type RowFatalError interface {
	error
	RowFatal() bool
}

// rowFatalCodes can never succeed for the record that caused them.
var rowFatalCodes = []*kerr.Error{
	kerr.MessageTooLarge,
	kerr.RecordListTooLarge,
	kerr.InvalidTopicException,
	kerr.InvalidRecord,
	kerr.CorruptMessage,
	kerr.TopicAuthorizationFailed,
	kerr.PolicyViolation,
	kerr.UnsupportedForMessageFormat,
	kerr.InvalidTimestamp,
}

// outageCodes mean the cluster refuses this client, not one record.
var outageCodes = []*kerr.Error{
	kerr.SaslAuthenticationFailed,
	kerr.UnsupportedSaslMechanism,
	kerr.IllegalSaslState,
	kerr.ClusterAuthorizationFailed,
}

// Classify maps a produce error to a Kind using franz-go's own error values.
// Errors it does not know are RowRetriable: the row is retried and, if it
// keeps failing, escalated with its error for a human to read.
func Classify(err error) Kind {
	if err == nil {
		return RowRetriable
	}
	if fe, ok := errors.AsType[RowFatalError](err); ok && fe.RowFatal() {
		return RowFatal
	}
	if ke, ok := errors.AsType[*kerr.Error](err); ok {
		for _, c := range rowFatalCodes {
			if ke == c {
				return RowFatal
			}
		}
		for _, c := range outageCodes {
			if ke == c {
				return Outage
			}
		}
		return RowRetriable
	}
	switch {
	case errors.Is(err, kgo.ErrClientClosed),
		errors.Is(err, context.Canceled),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET):
		return Outage
	}
	if _, ok := errors.AsType[net.Error](err); ok {
		return Outage
	}
	return RowRetriable
}
