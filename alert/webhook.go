package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// Defaults of WebhookConfig.
const (
	DefaultWebhookName         = "outbox-relay"
	DefaultWebhookTimeout      = 5 * time.Second
	DefaultWebhookMaxTries     = 3
	DefaultWebhookBackoff      = time.Second
	DefaultWebhookQueueSize    = 100
	DefaultWebhookDrainTimeout = 5 * time.Second
)

const (
	// maxWebhookBackoff caps the wait between tries, including one asked for
	// by a Retry-After header: an alert hours late is not worth holding the
	// queue for.
	maxWebhookBackoff = 30 * time.Second
	// maxTextBytes keeps a message with a huge embedded error within what
	// chat tools accept (Slack truncates text past 40,000 characters).
	maxTextBytes = 3000
)

// WebhookConfig configures a Webhook. Zero values mean the defaults.
type WebhookConfig struct {
	// URL receives the POSTs; required, http or https. It is treated as a
	// secret (a Slack incoming-webhook URL is its own credential) and never
	// appears in logs or errors.
	URL string
	// Header is added to every request, for receivers that want an
	// Authorization header. Optional.
	Header http.Header
	// Name prefixes the text, "[outbox-relay] …", so a shared channel shows
	// where an alert came from. Default "outbox-relay".
	Name string
	// Client sends the requests. Default: a client on http.DefaultTransport.
	// Timeout applies either way.
	Client *http.Client
	// Timeout bounds one request, connection included. Default 5s.
	Timeout time.Duration
	// MaxTries is how many times one alert is sent before it is given up,
	// when the receiver answers 5xx, 408 or 429 or cannot be reached. Other
	// 4xx answers are given up at once: sending the same body again will not
	// fix it. Default 3.
	MaxTries int
	// Backoff is the wait before the second try, doubled for each further
	// try, at most 30s. A longer Retry-After from the receiver is honoured up
	// to the same cap. Default 1s.
	Backoff time.Duration
	// QueueSize is how many alerts wait while one is being sent. When it is
	// full, Raise drops the alert, logs and counts it (Dropped) instead of
	// blocking its caller. Default 100.
	QueueSize int
	// DrainTimeout bounds how long Run keeps sending queued alerts after its
	// context ends. What is left then is dropped. Default 5s.
	DrainTimeout time.Duration
	// Logger receives failures and drops; never the URL. Default: discard.
	Logger *slog.Logger
	// Now fills in Alert.At when it is zero. Default time.Now.
	Now func() time.Time
}

// Webhook is an Alerter that POSTs each alert as JSON:
//
//	{"text": "[outbox-relay] rows_escalated: 37 rows escalated on topic X …",
//	 "kind": "rows_escalated", "topic": "X", "count": 37,
//	 "at": "2025-01-02T15:04:05Z"}
//
// An alert about an outbox adds "outbox": "tenant_a" and says it in the
// text: "[outbox-relay] rows_escalated in outbox tenant_a: …".
//
// "text" makes it a valid Slack (and Mattermost, Rocket.Chat, …) incoming
// webhook message; the other fields are for receivers that route alerts.
//
// Raise only enqueues: the requests are made by Run on its own goroutine, so
// a receiver that hangs costs the caller nothing. Put an Aggregator in front
// of it; the queue is for bursts, not for one message per row.
type Webhook struct {
	url          string
	header       http.Header
	name         string
	client       *http.Client
	timeout      time.Duration
	maxTries     int
	backoff      time.Duration
	drainTimeout time.Duration
	logger       *slog.Logger
	now          func() time.Time

	queue chan Alert

	sent, failed, dropped atomic.Uint64
}

var _ Alerter = (*Webhook)(nil)

// NewWebhook checks cfg and returns a Webhook. Call Run to have it send.
func NewWebhook(cfg WebhookConfig) (*Webhook, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		// url.Parse's error quotes the URL, which is a secret.
		return nil, errors.New("webhook url: cannot be parsed")
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("webhook url: must be an absolute http or https URL")
	}
	if cfg.Name == "" {
		cfg.Name = DefaultWebhookName
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultWebhookTimeout
	}
	if cfg.MaxTries <= 0 {
		cfg.MaxTries = DefaultWebhookMaxTries
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = DefaultWebhookBackoff
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultWebhookQueueSize
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultWebhookDrainTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Webhook{
		url:          cfg.URL,
		header:       cfg.Header.Clone(),
		name:         cfg.Name,
		client:       cfg.Client,
		timeout:      cfg.Timeout,
		maxTries:     cfg.MaxTries,
		backoff:      cfg.Backoff,
		drainTimeout: cfg.DrainTimeout,
		logger:       cfg.Logger,
		now:          cfg.Now,
		queue:        make(chan Alert, cfg.QueueSize),
	}, nil
}

// Raise queues a for Run and returns at once. When the queue is full the
// alert is dropped, logged and counted: blocking the delivery loop on a
// broken alert channel would turn an alerting problem into an outage.
func (w *Webhook) Raise(ctx context.Context, a Alert) {
	if a.At.IsZero() {
		a.At = w.now()
	}
	select {
	case w.queue <- a:
	default:
		n := w.dropped.Add(1)
		w.logger.LogAttrs(ctx, slog.LevelWarn, "alert_webhook_queue_full",
			slog.String("alert_kind", string(a.Kind)),
			slog.String("topic", a.Topic),
			slog.Uint64("dropped_total", n),
		)
	}
}

// Sent is how many alerts the receiver accepted (2xx).
func (w *Webhook) Sent() uint64 { return w.sent.Load() }

// Failed is how many alerts were given up after their tries or a 4xx.
func (w *Webhook) Failed() uint64 { return w.failed.Load() }

// Dropped is how many alerts were never sent because the queue was full or
// the drain after shutdown ran out of time.
func (w *Webhook) Dropped() uint64 { return w.dropped.Load() }

// Run sends queued alerts one at a time until ctx ends, then keeps sending
// what is queued for up to DrainTimeout, counts the rest as dropped and
// returns nil. Run at most once at a time.
func (w *Webhook) Run(ctx context.Context) error {
	// Requests run under sendCtx, which outlives ctx by DrainTimeout. Cutting
	// the request in flight at shutdown would lose it or, retried, send it
	// twice; and the queue may hold the summaries an Aggregator flushed as it
	// stopped. The bound keeps a hung receiver from holding up the exit.
	sendCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		select {
		case <-ctx.Done():
		case <-sendCtx.Done():
			return
		}
		t := time.NewTimer(w.drainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-sendCtx.Done():
		}
	})

	for {
		select {
		case <-ctx.Done():
			w.drain(sendCtx, nil)
			return nil
		case a := <-w.queue:
			if ctx.Err() != nil {
				// select picks at random when both are ready; past
				// shutdown, the drain's rules apply.
				w.drain(sendCtx, &a)
				return nil
			}
			tries, err := w.send(sendCtx, a)
			w.record(a, tries, err)
		}
	}
}

// drain sends first (if not nil) and what is queued until the queue is
// empty or ctx (the drain deadline) ends; what is left then is counted as
// dropped.
func (w *Webhook) drain(ctx context.Context, first *Alert) {
	var left uint64
	for {
		var a Alert
		if first != nil {
			a, first = *first, nil
		} else {
			select {
			case a = <-w.queue:
			default:
				if left > 0 {
					w.dropped.Add(left)
					w.logger.LogAttrs(ctx, slog.LevelWarn, "alert_webhook_drain_timeout",
						slog.Uint64("dropped", left),
						slog.Duration("drain_timeout", w.drainTimeout),
					)
				}
				return
			}
		}
		if ctx.Err() != nil {
			left++
			continue
		}
		tries, err := w.send(ctx, a)
		w.record(a, tries, err)
	}
}

// record counts the outcome of one alert and logs a failure, once.
func (w *Webhook) record(a Alert, tries int, err error) {
	if err == nil {
		w.sent.Add(1)
		return
	}
	w.failed.Add(1)
	w.logger.LogAttrs(context.Background(), slog.LevelError, "alert_webhook_failed",
		slog.String("alert_kind", string(a.Kind)),
		slog.String("topic", a.Topic),
		slog.Int("attempts", tries),
		slog.String("error", err.Error()),
	)
}

// send tries to deliver a until it is accepted, refused for good, out of
// tries, or ctx ends. It returns how many requests it made.
func (w *Webhook) send(ctx context.Context, a Alert) (int, error) {
	body, err := json.Marshal(w.payload(a))
	if err != nil {
		return 0, fmt.Errorf("encode webhook payload: %w", err)
	}
	for try := 1; ; try++ {
		retryAfter, err := w.post(ctx, body)
		if err == nil {
			return try, nil
		}
		var se *statusError
		if (errors.As(err, &se) && !se.retriable()) || try >= w.maxTries {
			return try, err
		}
		wait := min(w.backoff<<(try-1), maxWebhookBackoff)
		if retryAfter > wait {
			wait = min(retryAfter, maxWebhookBackoff)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return try, fmt.Errorf("%w (then %w)", err, ctx.Err())
		case <-t.C:
		}
	}
}

// statusError is a response the receiver gave; errors without one (refused
// connections, timeouts) are always worth another try.
type statusError struct{ code int }

func (e *statusError) Error() string {
	return fmt.Sprintf("webhook answered %d %s", e.code, http.StatusText(e.code))
}

func (e *statusError) retriable() bool {
	return e.code >= 500 || e.code == http.StatusTooManyRequests || e.code == http.StatusRequestTimeout
}

// post makes one request. On a retriable answer it also returns the wait the
// receiver asked for in Retry-After, if any.
func (w *Webhook) post(ctx context.Context, body []byte) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return 0, errors.New("build webhook request") // err would quote the URL
	}
	for k, v := range w.header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		// *url.Error quotes the URL; keep only what went wrong.
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		return 0, fmt.Errorf("post webhook: %w", err)
	}
	defer resp.Body.Close()
	// Read a little of the body so the connection can be reused, but never
	// let a receiver stream at us.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return 0, nil
	}
	se := &statusError{code: resp.StatusCode}
	if !se.retriable() {
		return 0, se
	}
	return retryAfter(resp.Header.Get("Retry-After")), se
}

// retryAfter reads the delay-seconds form of Retry-After; the HTTP-date form
// is rare from webhook receivers and is treated as absent.
func retryAfter(v string) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		return 0
	}
	return time.Duration(min(n, int(maxWebhookBackoff/time.Second))) * time.Second
}

type webhookPayload struct {
	Text   string `json:"text"`
	Kind   Kind   `json:"kind"`
	Outbox string `json:"outbox,omitempty"`
	Topic  string `json:"topic"`
	Count  int    `json:"count"`
	At     string `json:"at"`
}

func (w *Webhook) payload(a Alert) webhookPayload {
	kind := string(a.Kind)
	if a.Outbox != "" {
		kind += " in outbox " + a.Outbox
	}
	return webhookPayload{
		Text:   slackText(fmt.Sprintf("[%s] %s: %s", w.name, kind, a.Message)),
		Kind:   a.Kind,
		Outbox: a.Outbox,
		Topic:  a.Topic,
		Count:  a.Count,
		At:     a.At.UTC().Format(time.RFC3339),
	}
}

// slackEscaper escapes the three characters Slack's mrkdwn gives meaning to,
// so an error message quoting "<nil>" or a topic with "&" shows as written.
var slackEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

// slackText makes s one short line: newlines from wrapped errors become
// spaces, the mrkdwn characters are escaped, and the length is capped.
func slackText(s string) string {
	s = slackEscaper.Replace(strings.Join(strings.Fields(s), " "))
	if len(s) <= maxTextBytes {
		return s
	}
	cut := maxTextBytes - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
