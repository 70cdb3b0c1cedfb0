package relay

import "time"

// stallBound is how long a relay's batch transaction or session may be
// silent, or leave what it sent unacknowledged, before Postgres ends it:
// with the defaults, about two minutes. A relay that stops without closing
// its sessions (a frozen process, a paused VM, a network cut) would
// otherwise hold its batches' row locks, and with them every later row of
// their keys, and its instance slot, until the server noticed, which it may
// never do. internal/pgstore asks Postgres to end such sessions (see
// pgstore.NewStore and BoundSockets).
//
// A live relay stays within the bound. Its batch transaction is silent
// while the batch waits for Kafka: at most BatchTimeout per wave, after the
// first wave waited for the checks of the topics the relay had not used yet
// (topicCheckTimeout: they run at once, see topicVerdicts). Between waves
// it sends a statement when half a BatchTimeout has passed since the last
// one (pgstore.BatchTx.KeepAlive), so a batch of many waves is never silent
// for longer than one wave and a half. The slot's session counts the
// instances every PollInterval. Were the bound passed anyway, nothing is
// lost: the batch's rows are pending again and produced again, duplicates
// with the same outbox-id, in id order for each key.
func (c Config) stallBound() time.Duration {
	return 2*c.BatchTimeout + topicCheckTimeout + 2*c.PollInterval
}
