package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recorder is a sink that keeps what it receives and signals each arrival.
type recorder struct {
	mu     sync.Mutex
	alerts []Alert
	got    chan Alert // buffered generously; tests that wait read from it
}

func newRecorder() *recorder { return &recorder{got: make(chan Alert, 1000)} }

func (r *recorder) Raise(_ context.Context, a Alert) {
	r.mu.Lock()
	r.alerts = append(r.alerts, a)
	r.mu.Unlock()
	select {
	case r.got <- a:
	default:
	}
}

func (r *recorder) all() []Alert {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Alert(nil), r.alerts...)
}

// wait returns the next alert the recorder receives, failing the test if
// none arrives within a generous deadline.
func (r *recorder) wait(t *testing.T) Alert {
	t.Helper()
	select {
	case a := <-r.got:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no alert arrived within 10s")
		return Alert{}
	}
}

func TestLogWritesStructuredRecord(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	l := Log{Logger: slog.New(slog.NewJSONHandler(&buf, nil))}
	l.Raise(t.Context(), Alert{Kind: KindEscalated, Topic: "orders", Message: "row 7 too large", Count: 1})

	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("log line is not JSON: %v: %s", err, buf.String())
	}
	want := map[string]any{"level": "ERROR", "msg": "alert", "alert_kind": "rows_escalated", "topic": "orders", "count": float64(1), "detail": "row 7 too large"}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("log field %s = %v, want %v", k, rec[k], v)
		}
	}
}

func TestLogOmitsCountOfAlertsThatCountNothing(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	l := Log{Logger: slog.New(slog.NewJSONHandler(&buf, nil))}
	l.Raise(t.Context(), Alert{Kind: KindOutage, Message: "kafka unreachable for 1m0s"})

	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("log line is not JSON: %v: %s", err, buf.String())
	}
	if _, ok := rec["count"]; ok {
		t.Errorf("outage alert logged a count: %s", buf.String())
	}
	if rec["alert_kind"] != string(KindOutage) || rec["detail"] != "kafka unreachable for 1m0s" {
		t.Errorf("outage alert logged as %s", buf.String())
	}
}

func TestFanoutAndFunc(t *testing.T) {
	t.Parallel()
	r1, r2 := newRecorder(), newRecorder()
	counts := map[Kind]int{}
	f := Fanout{r1, Func(func(_ context.Context, a Alert) { counts[a.Kind]++ }), r2}

	f.Raise(t.Context(), Alert{Kind: KindOutage, Message: "down"})
	f.Raise(t.Context(), Alert{Kind: KindLag, Message: "late"})

	if len(r1.all()) != 2 || len(r2.all()) != 2 {
		t.Fatalf("sinks got %d and %d alerts, want 2 each", len(r1.all()), len(r2.all()))
	}
	if counts[KindOutage] != 1 || counts[KindLag] != 1 {
		t.Fatalf("Func counted %v", counts)
	}
}
