package wait

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSleepEndsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep on a cancelled context: %v, want context.Canceled", err)
	}
}

func TestSleepWaitsItsDuration(t *testing.T) {
	start := time.Now()
	if err := Sleep(context.Background(), 20*time.Millisecond); err != nil {
		t.Fatalf("Sleep: %v", err)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Errorf("Sleep returned after %v, want at least 20ms", d)
	}
}

func TestEveryRunsItsJobUntilItsContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	runs := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		Every(ctx, time.Millisecond, func(context.Context) {
			runs++
			if runs == 3 {
				cancel()
			}
		})
	}()
	<-done
	if runs != 3 {
		t.Errorf("Every ran its job %d times before its context ended, want 3", runs)
	}
}
