package verify

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/internal/wait"
)

// Periodic is the daemon's verify (RELAY_VERIFY_INTERVAL): every Interval
// it checks the rows sent since the previous run, exports the outcome as
// metrics, and alerts on missing and mismatched rows. Truncated rows are
// only logged and counted: retention shorter than the interval is a
// topic's choice, not a loss the relay caused.
type Periodic struct {
	Pool     *pgxpool.Pool
	Client   *kgo.Client
	Interval time.Duration
	// ProduceTimeout is the relay's; it sets the margin (Margin) by which
	// each window is widened backwards.
	ProduceTimeout time.Duration
	Logger         *slog.Logger
	Alerter        alert.Alerter
	Metrics        *Metrics

	// last is the latest outcome.
	last atomic.Pointer[Result]
}

// Result is the outcome of a periodic run, for the console.
type Result struct {
	At                                      time.Time
	Since                                   time.Time
	Checked, Missing, Truncated, Mismatched int64
	Err                                     string
}

// Last returns the latest outcome, if a run has ended.
func (p *Periodic) Last() (Result, bool) {
	r := p.last.Load()
	if r == nil {
		return Result{}, false
	}
	return *r, true
}

// Margin widens each window backwards. sent_at is when the batch recorded
// Kafka's acknowledgement, just before its commit (not when its
// transaction began, which may be many produce timeouts earlier), so a row
// commits shortly after its sent_at: the margin is a minute of clock skew
// (this host's against the database's) and commit time, plus a produce
// timeout to spare.
func Margin(produceTimeout time.Duration) time.Duration {
	return produceTimeout + time.Minute
}

// Run verifies every Interval until ctx ends.
func (p *Periodic) Run(ctx context.Context) {
	since := time.Now().Add(-p.Interval)
	wait.Every(ctx, p.Interval, func(ctx context.Context) {
		started := time.Now()
		if _, err := p.Once(ctx, since.Add(-Margin(p.ProduceTimeout))); err == nil {
			// A failed run's window is covered by the next one.
			since = started
		}
	})
}

// Once verifies the rows sent since then and reports the outcome.
func (p *Periodic) Once(ctx context.Context, since time.Time) (Report, error) {
	rep, err := Run(ctx, p.Pool, p.Client, Options{Since: since, MaxExamples: 10})
	met, log := p.Metrics, p.Logger
	if err != nil {
		if ctx.Err() != nil {
			return rep, err // shutting down
		}
		p.last.Store(&Result{At: time.Now(), Since: since, Err: err.Error()})
		met.runs.WithLabelValues("error").Inc()
		log.Warn("verify_error", "since", since, "error", err)
		return rep, err
	}
	p.last.Store(&Result{At: time.Now(), Since: since, Checked: rep.Total.Checked, Missing: rep.Total.Missing,
		Truncated: rep.Total.Truncated, Mismatched: rep.Total.Mismatched})
	met.checked.Add(float64(rep.Total.Checked))
	met.lastSuccess.SetToCurrentTime()
	met.problems.Reset()
	for _, t := range rep.Topics() {
		for _, prob := range Problems {
			met.problems.WithLabelValues(t.Topic, string(prob)).Set(float64(t.Of(prob)))
		}
	}
	t := rep.Total
	if t.Missing+t.Truncated+t.Mismatched == 0 {
		met.runs.WithLabelValues("ok").Inc()
		log.Info("verify_done", "since", since, "checked", t.Checked)
		return rep, nil
	}
	met.runs.WithLabelValues("problems").Inc()
	log.Error("verify_problems", "since", since, "checked", t.Checked, "missing", t.Missing,
		"truncated", t.Truncated, "mismatched", t.Mismatched)
	for _, e := range rep.Examples {
		log.Warn("verify_problem_row", "outbox_id", e.ID, "topic", e.Topic, "partition", e.Partition,
			"offset", e.Offset, "problem", string(e.Problem), "detail", e.Detail)
	}
	for _, topic := range rep.Topics() {
		n := topic.Missing + topic.Mismatched
		if n == 0 {
			continue
		}
		p.Alerter.Raise(ctx, alert.Alert{
			Kind:  alert.KindVerifyFailed,
			Topic: topic.Topic,
			Count: int(n),
			Message: fmt.Sprintf("%d rows of topic %s sent since %s are missing from Kafka (%d) or mismatched (%d): loss after the acknowledgement; run 'relay verify --topic %s --since %s'",
				n, topic.Topic, since.UTC().Format(time.RFC3339), topic.Missing, topic.Mismatched, topic.Topic, since.UTC().Format(time.RFC3339)),
			At: time.Now(),
		})
	}
	return rep, nil
}

// Metrics are the periodic verify's.
type Metrics struct {
	// runs counts runs by result: ok, problems or error.
	runs *prometheus.CounterVec
	// checked counts the rows checked, summed over runs (windows
	// overlap, so a row may count twice).
	checked prometheus.Counter
	// problems holds the last run's problem rows by topic and problem.
	problems *prometheus.GaugeVec
	// lastSuccess is when the last run that could check finished.
	lastSuccess prometheus.Gauge
}

// NewMetrics registers the periodic verify's metrics,
// outbox_relay_verify_*, on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outbox_relay_verify_runs_total", Help: "Periodic verify runs, by result: ok, problems (rows missing, truncated or mismatched) or error (could not check).",
		}, []string{"result"}),
		checked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outbox_relay_verify_rows_checked_total", Help: "Sent rows checked by periodic verify runs (windows overlap: a row may count twice).",
		}),
		problems: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outbox_relay_verify_problems", Help: "Rows with a problem in the last periodic verify run, by topic and problem (missing, truncated, mismatched).",
		}, []string{"topic", "problem"}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outbox_relay_verify_last_success_timestamp_seconds", Help: "When the last periodic verify run that could check its rows finished (Unix time).",
		}),
	}
	reg.MustRegister(m.runs, m.checked, m.problems, m.lastSuccess)
	return m
}
