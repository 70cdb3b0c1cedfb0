package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// syncBuffer is a log destination that tests can read while the webhook
// writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type webhookBundle struct {
	wh   *Webhook
	url  string
	logs *syncBuffer
	stop func() // ends Run and waits for it; also runs at cleanup
}

// startWebhook serves handler on an httptest server, points a Webhook at it
// and runs the Webhook until the test ends. Backoff defaults to 1ms so
// retries cost the test nothing.
func startWebhook(t *testing.T, handler http.HandlerFunc, cfg WebhookConfig) *webhookBundle {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close) // runs last: after Run has stopped

	b := &webhookBundle{logs: &syncBuffer{}}
	b.url = srv.URL + "/services/T000/B000/SECRET"
	cfg.URL = b.url
	cfg.Client = srv.Client()
	cfg.Logger = slog.New(slog.NewJSONHandler(b.logs, nil))
	if cfg.Backoff == 0 {
		cfg.Backoff = time.Millisecond
	}
	wh, err := NewWebhook(cfg)
	if err != nil {
		t.Fatalf("NewWebhook: %v", err)
	}
	b.wh = wh

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- wh.Run(ctx) }()
	var once sync.Once
	b.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v, want nil on shutdown", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return within 10s of its context ending")
			}
		})
	}
	t.Cleanup(b.stop)
	return b
}

// receive waits for a value with a deadline.
func receive[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatal("nothing arrived within 10s")
		var zero T
		return zero
	}
}

func decode(t *testing.T, r *http.Request) map[string]any {
	t.Helper()
	var p map[string]any
	if err := json.NewDecoder(r.Body).Decode(&p); err != nil {
		t.Errorf("request body is not JSON: %v", err)
	}
	return p
}

// attempts counts requests per topic.
type attempts struct {
	mu sync.Mutex
	n  map[string]int
}

func (a *attempts) add(topic string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == nil {
		a.n = map[string]int{}
	}
	a.n[topic]++
	return a.n[topic]
}

func (a *attempts) get(topic string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n[topic]
}

// An alert about an outbox names it, in the text and in a field of its own.
func TestWebhookPayloadNamesTheOutbox(t *testing.T) {
	t.Parallel()
	got := make(chan map[string]any, 1)
	b := startWebhook(t, func(w http.ResponseWriter, r *http.Request) { got <- decode(t, r) }, WebhookConfig{})
	b.wh.Raise(t.Context(), Alert{Kind: KindOutboxUnavailable, Outbox: "tenant_b", Message: "outbox tenant_b cannot start"})
	body := <-got
	if body["outbox"] != "tenant_b" || body["text"] != "[outbox-relay] outbox_unavailable in outbox tenant_b: outbox tenant_b cannot start" {
		t.Errorf("payload %v", body)
	}
	b.stop()
}

func TestWebhookPayload(t *testing.T) {
	t.Parallel()
	type request struct {
		contentType, auth string
		body              map[string]any
	}
	got := make(chan request, 1)
	b := startWebhook(t, func(w http.ResponseWriter, r *http.Request) {
		got <- request{r.Header.Get("Content-Type"), r.Header.Get("Authorization"), decode(t, r)}
	}, WebhookConfig{Header: http.Header{"Authorization": {"Bearer tok"}}})

	at := time.Date(2025, 1, 2, 15, 4, 5, 0, time.FixedZone("CET", 3600))
	b.wh.Raise(t.Context(), Alert{
		Kind:    KindEscalated,
		Topic:   "orders",
		Count:   37,
		Message: "37 rows escalated on topic orders in the last minute; first alert: value <nil> &\nmore",
		At:      at,
	})
	req := receive(t, got)
	if req.contentType != "application/json" || req.auth != "Bearer tok" {
		t.Errorf("Content-Type %q, Authorization %q", req.contentType, req.auth)
	}
	want := map[string]any{
		"text":  "[outbox-relay] rows_escalated: 37 rows escalated on topic orders in the last minute; first alert: value &lt;nil&gt; &amp; more",
		"kind":  "rows_escalated",
		"topic": "orders",
		"count": float64(37),
		"at":    "2025-01-02T14:04:05Z",
	}
	if len(req.body) != len(want) {
		t.Errorf("payload has fields %v, want %v", req.body, want)
	}
	for k, v := range want {
		if req.body[k] != v {
			t.Errorf("payload %s = %#v, want %#v", k, req.body[k], v)
		}
	}

	b.stop()
	if b.wh.Sent() != 1 || b.wh.Failed() != 0 || b.wh.Dropped() != 0 {
		t.Fatalf("sent %d, failed %d, dropped %d; want 1, 0, 0", b.wh.Sent(), b.wh.Failed(), b.wh.Dropped())
	}
}

func TestWebhookRetriesServerErrors(t *testing.T) {
	t.Parallel()
	var n attempts
	ok := make(chan map[string]any, 1)
	b := startWebhook(t, func(w http.ResponseWriter, r *http.Request) {
		p := decode(t, r)
		switch n.add("") {
		case 1:
			w.WriteHeader(http.StatusInternalServerError)
		case 2:
			w.WriteHeader(http.StatusTooManyRequests)
		default:
			ok <- p
		}
	}, WebhookConfig{})

	b.wh.Raise(t.Context(), Alert{Kind: KindOutage, Message: "Kafka unreachable"})
	if p := receive(t, ok); p["kind"] != "kafka_outage" {
		t.Fatalf("payload %v", p)
	}
	b.stop()
	if n.get("") != 3 || b.wh.Sent() != 1 || b.wh.Failed() != 0 {
		t.Fatalf("%d requests, sent %d, failed %d; want 3, 1, 0", n.get(""), b.wh.Sent(), b.wh.Failed())
	}
}

// The webhook sends one alert at a time, so when the "good" alert raised
// second arrives, the "bad" one before it is finished with.
func TestWebhookGivesUp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		status   int
		maxTries int
		want     int
	}{
		{"client error is not retried", http.StatusBadRequest, 3, 1},
		{"not found is not retried", http.StatusNotFound, 3, 1},
		{"server error up to MaxTries", http.StatusBadGateway, 3, 3},
		{"request timeout up to MaxTries", http.StatusRequestTimeout, 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var n attempts
			good := make(chan struct{}, 1)
			b := startWebhook(t, func(w http.ResponseWriter, r *http.Request) {
				topic, _ := decode(t, r)["topic"].(string)
				n.add(topic)
				if topic == "bad" {
					w.WriteHeader(tc.status)
					return
				}
				good <- struct{}{}
			}, WebhookConfig{MaxTries: tc.maxTries})

			b.wh.Raise(t.Context(), Alert{Kind: KindEscalated, Topic: "bad", Message: "m"})
			b.wh.Raise(t.Context(), Alert{Kind: KindEscalated, Topic: "good", Message: "m"})
			receive(t, good)
			if got := n.get("bad"); got != tc.want {
				t.Fatalf("bad alert sent %d times, want %d", got, tc.want)
			}
			b.stop()
			if b.wh.Failed() != 1 || b.wh.Sent() != 1 {
				t.Fatalf("failed %d, sent %d; want 1, 1", b.wh.Failed(), b.wh.Sent())
			}
			logs := b.logs.String()
			if !strings.Contains(logs, `"msg":"alert_webhook_failed"`) || !strings.Contains(logs, fmt.Sprintf(`"attempts":%d`, tc.want)) {
				t.Fatalf("failure not logged with its attempts:\n%s", logs)
			}
		})
	}
}

func TestWebhookRetriesNetworkErrorsAndHidesURL(t *testing.T) {
	t.Parallel()
	var n attempts
	b := startWebhook(t, func(w http.ResponseWriter, r *http.Request) {
		n.add("")
		// Drop the connection without an answer.
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		conn.Close()
	}, WebhookConfig{MaxTries: 2})

	b.wh.Raise(t.Context(), Alert{Kind: KindLag, Message: "late"})
	b.stop() // the alert in flight is finished, not cut short
	if n.get("") != 2 || b.wh.Failed() != 1 {
		t.Fatalf("%d requests, failed %d; want 2, 1", n.get(""), b.wh.Failed())
	}
	logs := b.logs.String()
	if !strings.Contains(logs, "alert_webhook_failed") {
		t.Fatalf("failure not logged:\n%s", logs)
	}
	if strings.Contains(logs, "SECRET") {
		t.Fatalf("log reveals the webhook URL:\n%s", logs)
	}
}

func TestWebhookHangingReceiverDoesNotBlockRaise(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{}, 100)
	release := make(chan struct{})
	const queue = 4
	b := startWebhook(t, func(w http.ResponseWriter, r *http.Request) {
		// Read the body first: only then does the server notice the client
		// hanging up and cancel r.Context.
		decode(t, r)
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}, WebhookConfig{QueueSize: queue, Timeout: time.Hour})
	t.Cleanup(func() { close(release) }) // before Run stops and the server closes

	b.wh.Raise(t.Context(), Alert{Kind: KindOutage, Message: "first"})
	receive(t, entered) // the worker is now stuck in the request

	const extra = 50
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range queue + extra {
			b.wh.Raise(context.Background(), Alert{Kind: KindEscalated, Topic: "X", Count: 1, Message: fmt.Sprint(i)})
		}
	}()
	receive(t, done)

	if got := b.wh.Dropped(); got != extra {
		t.Fatalf("dropped %d, want %d (queue %d full behind a hung request)", got, extra, queue)
	}
	if !strings.Contains(b.logs.String(), `"msg":"alert_webhook_queue_full"`) {
		t.Fatalf("drops not logged:\n%s", b.logs.String())
	}
}

func TestWebhookShutdownIsBoundedByDrainTimeout(t *testing.T) {
	t.Parallel()
	entered := make(chan struct{}, 100)
	b := startWebhook(t, func(w http.ResponseWriter, r *http.Request) {
		decode(t, r) // see above: needed for r.Context to end
		entered <- struct{}{}
		<-r.Context().Done() // hangs until the client gives up
	}, WebhookConfig{Timeout: time.Hour, DrainTimeout: 50 * time.Millisecond})

	for i := range 3 {
		b.wh.Raise(t.Context(), Alert{Kind: KindLag, Message: fmt.Sprint(i)})
	}
	receive(t, entered)
	b.stop() // fails the test if Run does not return

	// The alert in flight gets the drain's chance and fails; the two queued
	// behind it are dropped when the drain runs out of time.
	if b.wh.Failed() != 1 || b.wh.Dropped() != 2 || b.wh.Sent() != 0 {
		t.Fatalf("failed %d, dropped %d, sent %d; want 1, 2, 0", b.wh.Failed(), b.wh.Dropped(), b.wh.Sent())
	}
	if !strings.Contains(b.logs.String(), `"msg":"alert_webhook_drain_timeout"`) {
		t.Fatalf("drain drops not logged:\n%s", b.logs.String())
	}
}

func TestWebhookDrainSendsShutdownSummary(t *testing.T) {
	t.Parallel()
	// The wiring the package doc recommends: the aggregator stops first and
	// flushes its summary into the webhook, which is stopped after it.
	got := make(chan map[string]any, 10)
	b := startWebhook(t, func(w http.ResponseWriter, r *http.Request) {
		got <- decode(t, r)
	}, WebhookConfig{})
	agg := NewAggregator(AggregatorConfig{}, b.wh)
	stopAgg := runAggregator(t, agg)

	for i := range 3 {
		agg.Raise(t.Context(), escalated("X", i))
	}
	if p := receive(t, got); p["count"] != float64(1) {
		t.Fatalf("first payload %v, want the immediate alert", p)
	}
	stopAgg()
	b.stop()
	p := receive(t, got)
	if p["count"] != float64(3) || !strings.Contains(p["text"].(string), "3 rows escalated on topic X") {
		t.Fatalf("shutdown summary payload %v", p)
	}
}

func TestNewWebhookRejectsBadURL(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"", "hooks.slack.com/services/SECRET", "ftp://x/SECRET", "http://%zz/SECRET", "/SECRET"} {
		_, err := NewWebhook(WebhookConfig{URL: u})
		if err == nil {
			t.Errorf("NewWebhook(%q) accepted it", u)
			continue
		}
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("error for %q reveals the URL: %v", u, err)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]time.Duration{
		"":                              0,
		"3":                             3 * time.Second,
		" 7 ":                           7 * time.Second,
		"-1":                            0,
		"3600":                          maxWebhookBackoff,
		"Wed, 21 Oct 2015 07:28:00 GMT": 0,
	} {
		if got := retryAfter(v); got != want {
			t.Errorf("retryAfter(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestSlackTextIsCappedOnRuneBoundary(t *testing.T) {
	t.Parallel()
	s := slackText(strings.Repeat("é", maxTextBytes))
	if len(s) > maxTextBytes || !strings.HasSuffix(s, "…") || !utf8.ValidString(s) {
		t.Fatalf("capped text is %d bytes, valid %v", len(s), utf8.ValidString(s))
	}
}
