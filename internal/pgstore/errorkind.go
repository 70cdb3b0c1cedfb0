package pgstore

import "slices"

// The values of stuck_messages.error_kind: why a row was escalated. The
// relay writes them, and operators filter stuck rows by them.
const (
	// ErrorKindRowFatal: the row can never be produced as it is, so it
	// was escalated at its first failure.
	ErrorKindRowFatal = "row_fatal"
	// ErrorKindRowRetriable: the row failed, retriably, until it ran out
	// of attempts.
	ErrorKindRowRetriable = "row_retriable"
	// ErrorKindExpired: the row was not delivered by its expires_at, or its
	// expires_at comes before its deliver_after.
	ErrorKindExpired = "expired"
)

// ErrorKinds lists every error_kind value, for filters and their help.
var ErrorKinds = []string{ErrorKindRowFatal, ErrorKindRowRetriable, ErrorKindExpired}

// ValidErrorKind reports whether kind is one of ErrorKinds.
func ValidErrorKind(kind string) bool { return slices.Contains(ErrorKinds, kind) }
