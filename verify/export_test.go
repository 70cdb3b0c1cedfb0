package verify

import "github.com/prometheus/client_golang/prometheus"

// MetricsOf gives the tests m's collectors.
func MetricsOf(m *Metrics) (runs *prometheus.CounterVec, checked prometheus.Counter, problems *prometheus.GaugeVec) {
	return m.runs, m.checked, m.problems
}
