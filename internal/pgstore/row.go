// Package pgstore is the relay's Postgres side: every SQL statement the
// delivery engine runs and every session concern (claims, write-back,
// wake-ups, instance slots, retention, the backlog, session settings and the
// stall bound, socket dialing, the pool's settings, the migrations runner).
// Store runs the statements of one outbox; a batch's transaction is a
// BatchTx.
package pgstore

import (
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// Row is one claimed outbox row.
type Row struct {
	ID        int64
	Topic     string
	Key       []byte // nil: no key
	Payload   []byte // nil: tombstone
	Headers   []byte // raw jsonb text
	UUID      pgtype.UUID
	Attempts  int
	CreatedAt time.Time
	Wave      int // place in its key's chain in the batch: 1 for the key's first row and for rows without a key

	Size int64 // bytes of payload, key and headers, as the claim's byte bound counts them

	// The row's delivery options; nil when it does not set them.
	DeliverAfter *time.Time
	ExpiresAt    *time.Time
	Partition    *int32
	// Expired is true when the claim found expires_at passed.
	Expired bool
}

// ChainKey identifies a row's key within its topic: the rows of one chain
// go in id order.
func (r Row) ChainKey() string {
	return r.Topic + "\x00" + string(r.Key)
}
