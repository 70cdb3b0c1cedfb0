package kafkasink

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/pgstore"
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
	// Outage: Kafka, or the partition the row is bound for, is unreachable,
	// unavailable or under-replicated, or refuses us (connections,
	// authentication, a leader missing, too few in-sync replicas, a skewed
	// clock). Not the row's fault: no attempt is spent, wherever in a batch
	// the row was.
	Outage
)

func (k Kind) String() string {
	switch k {
	case RowFatal:
		return pgstore.ErrorKindRowFatal
	case Outage:
		return "outage"
	default:
		return pgstore.ErrorKindRowRetriable
	}
}

// RowFatalError is implemented by errors that mark a row as undeliverable as
// it is, such as headers that are not an object of strings. The relay's own
// validation errors implement it; Classify honours it.
type RowFatalError interface {
	error
	RowFatal() bool
}

// OutageError is implemented by errors that the caller knows are not the
// row's fault, whatever Kafka's code says (a topic the relay has seen exist
// answering UNKNOWN_TOPIC_OR_PARTITION). Classify honours it.
type OutageError interface {
	error
	Outage() bool
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
}

// batchCodes are the row-fatal answers a broker gives a whole record batch:
// the client then fails every record buffered for the partition with the
// same error, the innocent ones included. Only the record that caused it
// would get it again alone.
var batchCodes = []*kerr.Error{
	kerr.MessageTooLarge,
	kerr.RecordListTooLarge,
	kerr.InvalidRecord,
	kerr.CorruptMessage,
	kerr.PolicyViolation,
	kerr.UnsupportedForMessageFormat,
}

// RejectsBatch reports whether err is an answer Kafka gives a whole record
// batch (a batch too large, a record invalid or against policy), so that
// the record it failed may be innocent: it must be produced again alone
// before it is blamed.
func RejectsBatch(err error) bool {
	if _, ok := errors.AsType[RowFatalError](err); ok {
		return false // the relay's own verdict on the row itself
	}
	for _, c := range batchCodes {
		if errors.Is(err, c) {
			return true
		}
	}
	return false
}

// outageCodes mean the cluster refuses this client, not one record, or
// that the client's producer session went wrong (the client starts a new
// one; the record goes again with it).
var outageCodes = []*kerr.Error{
	kerr.SaslAuthenticationFailed,
	kerr.UnsupportedSaslMechanism,
	kerr.IllegalSaslState,
	kerr.ClusterAuthorizationFailed,
	kerr.OutOfOrderSequenceNumber,
	kerr.UnknownProducerID,
	kerr.InvalidProducerEpoch,
	kerr.InvalidProducerIDMapping,
	kerr.ProducerFenced,
}

// Classify maps a produce error to a Kind using franz-go's own error values.
//
// Errors Kafka calls retriable (NOT_ENOUGH_REPLICAS, NOT_LEADER_FOR_PARTITION,
// LEADER_NOT_AVAILABLE, REQUEST_TIMED_OUT, ...) describe a partition, not a
// record: the client retries them until the record's context ends (the
// produce timeout: errProduceTimeout, a kgo.ErrRecordTimeout) or reports
// them for every record of the partition. They are Outage, so a partition
// that is down for longer than a produce timeout costs its rows no attempt,
// whatever else their batch held. UNKNOWN_TOPIC_OR_PARTITION is the
// exception: a topic that does not exist is the row's own problem (see
// ErrTopicMissing). INVALID_TIMESTAMP is Outage too: a record's timestamp
// is its row's created_at (or mapped timestamp), so it means the topic
// bounds timestamps more tightly than the backlog's age, or the database's
// clock is skewed against the broker's: an operator's fix, not the row's
// (see errClockSkew).
//
// Errors it does not know are RowRetriable: the row is retried and, if it
// keeps failing, escalated with its error for a human to read.
func Classify(err error) Kind {
	if err == nil {
		return RowRetriable
	}
	if fe, ok := errors.AsType[RowFatalError](err); ok && fe.RowFatal() {
		return RowFatal
	}
	if oe, ok := errors.AsType[OutageError](err); ok && oe.Outage() {
		return Outage
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
		switch {
		case ke == kerr.UnknownTopicOrPartition:
			return RowRetriable
		case ke.Retriable, ke == kerr.InvalidTimestamp:
			return Outage
		}
		return RowRetriable
	}
	switch {
	case errors.Is(err, kgo.ErrRecordTimeout),
		errors.Is(err, kgo.ErrRecordRetries),
		errors.Is(err, kgo.ErrClientClosed),
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
