package relay

import (
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"
)

// BoundSockets makes the connections of poolCfg give up on a Postgres that
// stops acknowledging what the relay sends after the relay's stall bound
// (see stall.go), instead of after the kernel's retransmissions, about 15
// minutes: behind a network that silently drops packets, a statement the
// relay sent would wait that long for its answer. It is the client's half
// of the stall bound; the server's half ends the sessions of a relay that
// went silent. A connection that gives up fails its statement: the batch's
// rows are pending again, to be produced again with the same outbox-id, and
// the relay reconnects. It sets TCP_USER_TIMEOUT on TCP connections, on
// Linux only (elsewhere it changes nothing), and keeps the connect timeout
// of the database URL.
func BoundSockets(poolCfg *pgxpool.Config, cfg Config) {
	bound := int(cfg.withDefaults().stallBoundMs())
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
