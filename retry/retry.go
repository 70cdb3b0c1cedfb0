// Package retry decides when a failed row is tried again. It is pure: no I/O,
// no clock, and randomness is injected, so every decision is table-testable.
package retry

import (
	"math/rand/v2"
	"time"
)

// Policy is exponential backoff with full jitter: the wait before attempt n+1
// is uniform in [0, min(Max, Base·2ⁿ⁻¹)). Full jitter spreads the retries of
// rows that failed together so they do not come back as one burst.
type Policy struct {
	// Base is the upper bound of the first wait. Zero means one second.
	Base time.Duration
	// Max caps every wait. Zero means five minutes.
	Max time.Duration
	// Int64N returns a uniform value in [0, n). Nil means math/rand/v2.
	Int64N func(n int64) int64
}

// Next returns how long to wait after the given failed attempt (1 is the
// first failure). The result is never negative and never above Max.
func (p Policy) Next(attempt int) time.Duration {
	base, limit := p.Base, p.Max
	if base <= 0 {
		base = time.Second
	}
	if limit <= 0 {
		limit = 5 * time.Minute
	}
	ceiling := limit
	if attempt < 1 {
		attempt = 1
	}
	// Double base attempt-1 times, stopping once it reaches the cap so the
	// shift can never overflow.
	d := base
	for i := 1; i < attempt && d < limit; i++ {
		d *= 2
	}
	if d < ceiling {
		ceiling = d
	}
	draw := p.Int64N
	if draw == nil {
		draw = rand.Int64N
	}
	return time.Duration(draw(int64(ceiling) + 1))
}
