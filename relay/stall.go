package relay

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// A relay that stops without closing its sessions (a frozen process or
// container, a paused VM, a network cut between it and Postgres) would
// otherwise keep what its sessions hold until the server notices: its
// batches' row locks, and with them every later row of their keys, and its
// instance slot, and with it a share of the in-flight budget. A frozen
// process's sockets stay open, so the server may never notice; behind a cut
// network it takes the kernel's TCP keepalive, two hours by default.
//
// So the relay asks Postgres itself to end a session that has been silent
// for longer than any live relay ever leaves it: stallBound. A batch's
// transaction sets idle_in_transaction_session_timeout to it (SET LOCAL,
// so the pool's connections keep their defaults outside batches, and a
// database default shorter than a batch's wait for Kafka no longer cuts
// batches off); the slot's connection sets idle_session_timeout. The
// server's timer ends the session whatever the network does, and its locks
// go with it: the other relays claim the rows and take the share.
//
// Those timers run only while the server waits for the client. A server
// that is sending to a frozen client (a claim's rows, or notifications to
// the listener) waits in the send instead, and neither timer fires: a
// frozen listener would pin the notification queue, which every database
// of the cluster shares, until NOTIFY fails for all of them. So the batch
// transactions, the slot's session and the listener's also set
// tcp_user_timeout to the bound: data the client has not acknowledged
// within it (a frozen client's full receive window included) ends the
// connection.
//
// A live relay stays within the bound. Its batch transaction is silent
// while the batch waits for Kafka: at most BatchTimeout per wave, after the
// first wave waited for the checks of the topics the relay had not used yet
// (topicCheckTimeout: they run at once, see topicVerdicts). Between
// waves, keepAlive sends a statement when half a BatchTimeout has passed
// since the last one, so a batch of many waves is never silent for longer
// than one wave and a half. The slot's connection counts the instances
// every PollInterval. Were the bound passed anyway (a machine so loaded
// that the relay's goroutines do not run for minutes), nothing is lost: the batch's rows are pending again
// and produced again, duplicates with the same outbox-id, and each key's
// first deliveries stay in id order, since each relay produces a key's
// rows in order.

// stallBound is how long a relay's batch transaction or slot session may be
// silent before Postgres ends it: with the defaults, about two minutes.
func (c Config) stallBound() time.Duration {
	return 2*c.BatchTimeout + topicCheckTimeout + 2*c.PollInterval
}

// stallBoundMillis is stallBound as a Postgres setting's value, which
// cannot exceed 2^31-1 ms (24.8 days; produce timeouts of days come near).
func (c Config) stallBoundMillis() string {
	return strconv.FormatInt(c.stallBoundMs(), 10)
}

// stallBoundMs is stallBound in milliseconds, at most 2^31-1, as Postgres's
// settings and the kernel's TCP_USER_TIMEOUT take it.
func (c Config) stallBoundMs() int64 {
	return min(c.stallBound().Milliseconds(), math.MaxInt32)
}

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
func (r *Relay) ownSession(ctx context.Context, settings string) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, r.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, settings, r.cfg.stallBoundMillis()); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return conn, nil
}

// batchKeepAlive returns the function produceWaves calls between waves: it
// sends a statement on the batch's transaction when half a BatchTimeout has
// passed since the last one, and fails once Postgres has ended the
// transaction (the batch then stops: its rows are pending again).
func (r *Relay) batchKeepAlive(tx pgx.Tx) func(context.Context) error {
	last := time.Now()
	return func(ctx context.Context) error {
		if time.Since(last) < r.cfg.BatchTimeout/2 {
			return nil
		}
		if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
			return fmt.Errorf("batch transaction lost: %w", err)
		}
		last = time.Now()
		return nil
	}
}
