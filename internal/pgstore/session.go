package pgstore

import (
	"context"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// slotSessionQuery bounds the slot session's silence and its unacknowledged
// sends ($1, in ms).
const slotSessionQuery = `
SELECT set_config('idle_session_timeout', $1, false), set_config('tcp_user_timeout', $1, false)`

// listenerSessionQuery bounds the listener's unacknowledged sends ($1, in
// ms). A live listener is silent for as long as no row arrives, so it sets
// no idle timeout.
const listenerSessionQuery = `SELECT set_config('tcp_user_timeout', $1, false)`

// ownSession opens a plain connection, outside the pool, for a session
// that must outlive any transaction (the slot's, the listener's), and
// bounds it with settings, slotSessionQuery or listenerSessionQuery.
func (s *Store) ownSession(ctx context.Context, settings string) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, settings, s.bound); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return conn, nil
}

// BoundSockets makes the connections of poolCfg give up on a Postgres that
// stops acknowledging what the relay sends after stallBound, instead of
// after the kernel's retransmissions, about 15 minutes: behind a network
// that silently drops packets, a statement the relay sent would wait that
// long for its answer. It is the client's half of the stall bound; the
// server's half ends the sessions of a relay that went silent. A connection
// that gives up fails its statement: the batch's rows are pending again, to
// be produced again with the same outbox-id, and the relay reconnects. It
// sets TCP_USER_TIMEOUT on TCP connections, on Linux only (elsewhere it
// changes nothing), and keeps the connect timeout of the database URL.
func BoundSockets(poolCfg *pgxpool.Config, stallBound time.Duration) {
	bound := int(boundMs(stallBound))
	d := &net.Dialer{
		Timeout: poolCfg.ConnConfig.ConnectTimeout,
		Control: func(network, _ string, c syscall.RawConn) error {
			if network != "tcp" && network != "tcp4" && network != "tcp6" {
				return nil // a Unix socket: no network to lose
			}
			return setUserTimeout(c, bound)
		},
	}
	poolCfg.ConnConfig.DialFunc = d.DialContext
}

// sessionNamePrefix starts the application_name of a relay's sessions.
const sessionNamePrefix = "outbox-relay"

// NameSessions sets the application_name of poolCfg's sessions to
// "outbox-relay <instance>", unless the database URL (or PGAPPNAME) already
// names them, so operators find the relay's sessions in pg_stat_activity
// and can measure what they cost. Postgres keeps the first 63 bytes of it.
// The sessions the relay opens on its own (the LISTEN connection, the
// instance slot) copy the pool's settings, and with them the name.
func NameSessions(poolCfg *pgxpool.Config, instance string) {
	if _, ok := poolCfg.ConnConfig.RuntimeParams["application_name"]; ok {
		return
	}
	poolCfg.ConnConfig.RuntimeParams["application_name"] = sessionNamePrefix + " " + instance
}
