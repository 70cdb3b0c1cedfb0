package relay

import (
	"errors"
	"fmt"

	"github.com/outboxrelay/relay/internal/pgstore"
)

// expiredError is a row that must not be produced: its expires_at has
// passed, or comes before its deliver_after. It is escalated at once, with
// error_kind pgstore.ErrorKindExpired.
type expiredError struct{ reason string }

func (e expiredError) Error() string  { return e.reason }
func (e expiredError) RowFatal() bool { return true }

// expiry returns an expiredError when the row must not be produced. The
// sink asks it of every row before making a record (kafkasink.Options.Refuse).
func expiry(r row) error {
	const at = "2006-01-02T15:04:05.000Z07:00"
	switch {
	case r.ExpiresAt != nil && r.DeliverAfter != nil && r.ExpiresAt.Before(*r.DeliverAfter):
		return expiredError{fmt.Sprintf("expired: expires_at %s is before deliver_after %s, so the row could never be delivered in time; "+
			"requeue it (requeue clears expires_at) or discard it", r.ExpiresAt.UTC().Format(at), r.DeliverAfter.UTC().Format(at))}
	case r.Expired:
		return expiredError{fmt.Sprintf("expired: not delivered by its expires_at %s, and never produced late; "+
			"requeue it to deliver it anyway (requeue clears expires_at) or discard it", r.ExpiresAt.UTC().Format(at))}
	}
	return nil
}

// errorKind is what stuck_messages.error_kind says of f.
func (f failure) errorKind() string {
	if _, ok := errors.AsType[expiredError](f.err); ok {
		return pgstore.ErrorKindExpired
	}
	return f.kind.String()
}
