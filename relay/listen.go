package relay

import (
	"context"

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
// in migrations/ names it.
func WakeupChannel(schema string) string { return schema + "_wakeup" }
