package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/alert"
)

// loggedAlert is the part of an "alert" log line this test reads.
type loggedAlert struct {
	Kind   string `json:"alert_kind"`
	Topic  string `json:"topic"`
	Count  int    `json:"count"`
	Detail string `json:"detail"`
}

func alertLines(t *testing.T, logs string) []loggedAlert {
	t.Helper()
	var out []loggedAlert
	for line := range strings.Lines(logs) {
		var l struct {
			Msg string `json:"msg"`
			loggedAlert
		}
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if l.Msg == "alert" {
			out = append(out, l.loggedAlert)
		}
	}
	return out
}

// The README and the runbook say alerts are grouped per RELAY_ALERT_WINDOW;
// that holds for the log as well as for the webhook, and both get the same
// messages: the first alert of a group at once, the rest as one summary.
func TestAlertsAreGroupedInTheLogAndTheWebhook(t *testing.T) {
	t.Parallel()
	for _, withWebhook := range []bool{false, true} {
		name := "log only"
		if withWebhook {
			name = "log and webhook"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var (
				mu    sync.Mutex
				texts []string
			)
			cfg := Config{AlertWindow: time.Hour}
			if withWebhook {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					body, _ := io.ReadAll(r.Body)
					var p struct {
						Text string `json:"text"`
					}
					if err := json.Unmarshal(body, &p); err != nil {
						t.Errorf("webhook body %q: %v", body, err)
					}
					mu.Lock()
					texts = append(texts, p.Text)
					mu.Unlock()
				}))
				t.Cleanup(srv.Close)
				cfg.AlertWebhookURL = srv.URL
			}
			var logs syncBuffer
			sink, start, err := alerting(cfg, slog.New(slog.NewJSONHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			g, gctx := errgroup.WithContext(ctx)
			start(gctx, g)

			for i := range 5 {
				sink.Raise(ctx, alert.Alert{Kind: alert.KindEscalated, Topic: "orders", Count: 1,
					Message: "1 rows of topic orders moved to stuck_messages; row " + string(rune('a'+i))})
			}
			sink.Raise(ctx, alert.Alert{Kind: alert.KindOutage, Message: "no broker answers: connection refused"})

			got := alertLines(t, logs.String())
			if len(got) != 2 || got[0].Kind != "rows_escalated" || got[0].Count != 1 || got[1].Kind != "kafka_outage" {
				t.Fatalf("before the window ends the log should hold the first alert of each group, got %+v", got)
			}

			// Shutdown flushes the window: one summary for the four alerts
			// not yet logged, counting all five rows of the window.
			cancel()
			if err := g.Wait(); err != nil {
				t.Fatal(err)
			}
			got = alertLines(t, logs.String())
			if len(got) != 3 {
				t.Fatalf("want the 2 first alerts and 1 summary in the log, got %d: %+v", len(got), got)
			}
			s := got[2]
			if s.Kind != "rows_escalated" || s.Topic != "orders" || s.Count != 5 ||
				!strings.HasPrefix(s.Detail, "5 rows escalated on topic orders in the last ") {
				t.Errorf("summary line = %+v", s)
			}
			if !withWebhook {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if len(texts) != 3 {
				t.Fatalf("the webhook should get the same 3 messages as the log, got %q", texts)
			}
			for i, text := range texts {
				if !strings.HasSuffix(text, got[i].Detail) {
					t.Errorf("webhook message %d = %q, log says %q", i, text, got[i].Detail)
				}
			}
		})
	}
}
