package main

import (
	"context"
	"net/http"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/plugin/kprom"

	"github.com/outboxrelay/relay/alert"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/verify"
)

// metrics is the process's Prometheus registry: the Go runtime and process
// collectors and the build info, and each outbox's metrics (forOutbox).
type metrics struct {
	reg *prometheus.Registry
}

// outboxMetrics are one outbox's metrics: the relay's own, its Kafka
// client's (kprom), its pool's, its alerts by kind, its periodic verify's
// and its readiness. In a process with several outboxes each series
// carries the label outbox="<schema>", added by the registerer
// (prometheus.WrapRegistererWith), so that the same names serve one outbox
// or several.
type outboxMetrics struct {
	reg    prometheus.Registerer
	relay  *relay.Metrics
	kafka  *kprom.Metrics
	alerts *prometheus.CounterVec
	verify *verify.Metrics
	// ready is what outbox_relay_ready reports; nil until the relay runs.
	ready atomic.Pointer[readiness]
}

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo())
	return &metrics{reg: reg}
}

// forOutbox registers the metrics of an outbox, labelled outbox=label; an
// empty label (a process with one outbox) adds no label, so that its series
// are what they always were.
func (m *metrics) forOutbox(label string) *outboxMetrics {
	var reg prometheus.Registerer = m.reg
	if label != "" {
		reg = prometheus.WrapRegistererWith(prometheus.Labels{"outbox": label}, m.reg)
	}
	om := &outboxMetrics{
		reg:   reg,
		relay: relay.NewMetrics(reg),
		kafka: kprom.NewMetrics("outbox_relay_kafka", kprom.Registerer(reg)),
		alerts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outbox_relay_alerts_total", Help: "Alerts raised, by kind, before aggregation.",
		}, []string{"kind"}),
		verify: verify.NewMetrics(reg),
	}
	reg.MustRegister(om.alerts)
	om.watchReadiness()
	return om
}

// countAlerts is an alert sink that counts alerts by kind.
func (m *outboxMetrics) countAlerts() alert.Alerter {
	return alert.Func(func(_ context.Context, a alert.Alert) { m.alerts.WithLabelValues(string(a.Kind)).Inc() })
}

// watchPool exports the pool's connection statistics.
func (m *outboxMetrics) watchPool(pool *pgxpool.Pool) {
	gauge := func(name, help string, f func(*pgxpool.Stat) float64) {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outbox_relay_db_pool_" + name, Help: help},
			func() float64 { return f(pool.Stat()) }))
	}
	gauge("connections", "Connections open in the pool.", func(s *pgxpool.Stat) float64 { return float64(s.TotalConns()) })
	gauge("connections_in_use", "Connections in use.", func(s *pgxpool.Stat) float64 { return float64(s.AcquiredConns()) })
	gauge("connections_max", "Most connections the pool may open.", func(s *pgxpool.Stat) float64 { return float64(s.MaxConns()) })
	m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "outbox_relay_db_pool_acquire_wait_seconds_total",
		Help: "Time spent waiting for a pool connection."}, func() float64 { return pool.Stat().AcquireDuration().Seconds() }))
}

// watchReadiness exports outbox_relay_ready: the answer of /readyz's
// checks (reused for readyFresh, like the probes', so scrapes add no load),
// 0 until the outbox's relay has started (and while an outbox that cannot
// start is retried). An alert on readiness then needs no probe of its own.
func (m *outboxMetrics) watchReadiness() {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "outbox_relay_ready",
		Help: "1 when the outbox's checks of /readyz pass (database and migrations, Kafka, delivery), else 0, and 0 while its relay starts or cannot start."},
		func() float64 {
			rd := m.ready.Load()
			if rd == nil {
				return 0
			}
			ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
			defer cancel()
			if problems, ok := rd.answer(ctx); !ok || len(problems) > 0 {
				return 0
			}
			return 1
		}))
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}
