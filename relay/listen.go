package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"

	"github.com/jackc/pgx/v5"
)

// listen keeps a dedicated connection LISTENing on the schema's wake-up
// channel and pokes the delivery loop on every notification. Notifications
// sent while the connection was down are lost, so after every (re)connect it
// also pokes once: a full poll covers the gap.
func (r *Relay) listen(ctx context.Context) {
	r.keepSession(ctx, "listen_failed", r.listenOnce)
}

// listenOnce runs one LISTEN session until it fails or ctx ends. connected is
// called once the LISTEN is in place.
func (r *Relay) listenOnce(ctx context.Context, connected func()) error {
	// A session of its own: LISTEN is session state and the connection
	// spends its life blocked waiting. Should this relay freeze, Postgres
	// ends the session once notifications wait unread.
	conn, err := r.ownSession(ctx, listenerSessionQuery)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{WakeupChannel(r.cfg.Schema)}.Sanitize()); err != nil {
		return err
	}
	connected()
	r.poke()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		r.poke()
	}
}

// WakeupChannel is the NOTIFY channel of a schema's outbox, as the trigger
// in migrations/ names it: '<schema>_wakeup', or, when that would pass
// Postgres's 63-byte limit on names, the schema's first 47 characters, '_',
// 8 hex digits of its SHA-256 and '_wakeup'.
func WakeupChannel(schema string) string {
	if len(schema)+len("_wakeup") <= maxIdentifierBytes {
		return schema + "_wakeup"
	}
	sum := sha256.Sum256([]byte(schema))
	return schema[:47] + "_" + hex.EncodeToString(sum[:4]) + "_wakeup"
}

// maxIdentifierBytes is Postgres's limit on names (NAMEDATALEN - 1).
const maxIdentifierBytes = 63
