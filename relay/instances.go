package relay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"
)

// instanceCount is what a relay last counted.
type instanceCount struct {
	n    int // relays holding a slot of the outbox, this one included
	rank int // how many of them hold a lower slot
}

// Instances is how many relays this one last counted on its outbox,
// itself included; 0 until it has counted.
func (r *Relay) Instances() int {
	if c := r.instances.Load(); c != nil {
		return c.n
	}
	return 0
}

// inFlightLimit is this relay's share of InFlightBatches: an equal part,
// and one more for the lowest slots while the remainder lasts. It is 0 for
// a standby, and the whole budget until the first count succeeds.
//
// InFlightBatches is a budget for all the relays of an outbox together:
// their batches compete for the same cores, pages and locks (measured on
// two cores, two relays with two batches in flight each drained about 0.9×
// what one relay did, and with the two batches split between them 0.99×;
// docs/performance.md). The instances split it in the order of their slots
// (pgstore.Slot): with the default of 2, one relay keeps 2 batches in
// flight, two keep 1 each, and a third is a standby that claims nothing
// until one of the others is gone.
func (r *Relay) inFlightLimit() int {
	c := r.instances.Load()
	if c == nil || c.n < 1 {
		return r.cfg.InFlightBatches
	}
	share := r.cfg.InFlightBatches / c.n
	if c.rank < r.cfg.InFlightBatches%c.n {
		share++
	}
	return share
}

// watchInstances holds this relay's slot and recounts the instances every
// poll interval, reconnecting after failures.
func (r *Relay) watchInstances(ctx context.Context) {
	r.keepSession(ctx, "instances_check_failed", func(ctx context.Context, connected func()) error {
		err := r.instancesOnce(ctx, connected)
		// A first count that failed (the database is not reachable
		// yet): the loop goes on with the whole budget until a count.
		r.countedOnce.Do(func() { close(r.counted) })
		return err
	})
}

// instancesOnce takes a slot and counts the instances until the slot's
// session fails or ctx ends. connected is called once the slot is held.
func (r *Relay) instancesOnce(ctx context.Context, connected func()) error {
	slot, err := r.store.TakeSlot(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = slot.Close(context.WithoutCancel(ctx)) }()
	connected()
	t := time.NewTicker(r.cfg.PollInterval)
	defer t.Stop()
	for {
		var c instanceCount
		if c.n, c.rank, err = slot.Count(ctx); err != nil {
			return err
		}
		r.setInstances(c)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// setInstances records a new count. When it changed, it logs it and pokes
// the delivery loop: a standby may have a share now.
func (r *Relay) setInstances(c instanceCount) {
	defer r.countedOnce.Do(func() { close(r.counted) })
	if old := r.instances.Swap(&c); old != nil && *old == c {
		return
	}
	r.cfg.Metrics.setInstances(c.n)
	r.logger.Info("instances", "count", c.n, "in_flight_batches", r.inFlightLimit())
	r.poke()
}

// RandomInstanceName is the name New gives a relay whose Config.Instance is
// empty.
func RandomInstanceName() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "relay-" + hex.EncodeToString(b[:])
}
