package retry

import (
	"testing"
	"time"
)

func TestPolicyNextCeiling(t *testing.T) {
	t.Parallel()
	highest := func(n int64) int64 { return n - 1 } // always the top of the range
	p := Policy{Base: 100 * time.Millisecond, Max: time.Second, Int64N: highest}
	cases := []struct {
		attempt int
		want    time.Duration
	}{
		{0, 100 * time.Millisecond},
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{4, 800 * time.Millisecond},
		{5, time.Second},
		{1000, time.Second},
	}
	for _, c := range cases {
		if got := p.Next(c.attempt); got != c.want {
			t.Errorf("Next(%d) = %v, want %v", c.attempt, got, c.want)
		}
	}
}

func TestPolicyNextJitterRange(t *testing.T) {
	t.Parallel()
	lowest := func(int64) int64 { return 0 }
	p := Policy{Base: time.Second, Max: time.Minute, Int64N: lowest}
	if got := p.Next(3); got != 0 {
		t.Fatalf("Next with lowest draw = %v, want 0", got)
	}
	// With the real source every value stays inside [0, ceiling].
	p.Int64N = nil
	for i := 0; i < 1000; i++ {
		if got := p.Next(2); got < 0 || got > 2*time.Second {
			t.Fatalf("Next(2) = %v, outside [0, 2s]", got)
		}
	}
}

func TestPolicyDefaults(t *testing.T) {
	t.Parallel()
	highest := func(n int64) int64 { return n - 1 }
	p := Policy{Int64N: highest}
	if got := p.Next(1); got != time.Second {
		t.Errorf("default base: Next(1) = %v, want 1s", got)
	}
	if got := p.Next(64); got != 5*time.Minute {
		t.Errorf("default max: Next(64) = %v, want 5m", got)
	}
}
