package relay

import (
	"testing"
	"time"

	"github.com/outboxrelay/relay/retry"
)

// A relay whose loop failed many times in a row (a long Postgres or Kafka
// outage) tries again within seconds, not after the rows' RETRY_MAX: with the
// default policy it used to wait up to 5 minutes after the outage ended.
func TestLoopBackoffIsCappedWhileRowBackoffIsNot(t *testing.T) {
	t.Parallel()
	longest := func(n int64) int64 { return n - 1 }
	r := New(Config{Retry: retry.Policy{Base: time.Second, Max: 5 * time.Minute, Int64N: longest}}, nil, nil, nil)
	for failures := 1; failures <= 30; failures++ {
		if w := r.loopBackoff(failures); w > maxLoopBackoff {
			t.Fatalf("after %d loop failures the relay waits %v, want at most %v", failures, w, maxLoopBackoff)
		}
	}
	if got := r.loopBackoff(1); got != time.Second {
		t.Errorf("after the first loop failure the relay waits %v, want the policy's 1s", got)
	}
	if got := r.cfg.Retry.Next(30); got != 5*time.Minute {
		t.Errorf("a row's backoff after 30 attempts is %v, want the policy's 5m (rows keep RETRY_MAX)", got)
	}
}
