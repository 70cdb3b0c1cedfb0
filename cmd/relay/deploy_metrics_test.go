package main

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.yaml.in/yaml/v4"
)

// The files under deploy/ that name the relay's metrics.
const (
	rulesFile     = "../../deploy/prometheus/outbox-relay.rules.yml"
	dashboardFile = "../../deploy/grafana/outbox-relay.json"
)

// exportedMetrics returns every series name the daemon's /metrics can serve:
// the descriptors of a registry wired as serve wires it (relay, Kafka
// client, pool, readiness, alerts, verify, build info, Go and process
// collectors), so a vector that has no series yet counts too, plus the
// _bucket, _sum and _count series of its histograms and summaries.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	met := newMetrics()
	om := met.forOutbox("")
	// Neither connects until used: the pool is lazy, the client dials on
	// its first request.
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@"+closedPort(t)+"/none?connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	om.watchPool(pool)
	client, err := kgo.NewClient(kgo.SeedBrokers(closedPort(t)), kgo.WithHooks(om.kafka))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)

	names := map[string]bool{}
	descs := make(chan *prometheus.Desc)
	go func() {
		met.reg.Describe(descs)
		close(descs)
	}()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range descs {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("descriptor without a name: %v", d)
		}
		names[m[1]] = true
	}
	// Types come from the series gathered; a histogram vector without
	// series has no _bucket to query yet, and the test says so.
	families, err := met.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[f.GetName()+"_bucket"] = true
			fallthrough
		case dto.MetricType_SUMMARY:
			names[f.GetName()+"_sum"] = true
			names[f.GetName()+"_count"] = true
		}
	}
	if len(names) < 40 || !names["outbox_relay_rows_sent_total"] || !names["outbox_relay_kafka_write_errors_total"] || !names["outbox_relay_db_pool_connections_in_use"] {
		t.Fatalf("the wired registry lacks the relay's, Kafka client's or pool's metrics: %v", slices.Sorted(maps.Keys(names)))
	}
	return names
}

// promqlMetricNames returns the metric names a PromQL expression selects.
// It drops what cannot be a metric name (strings, label matchers, ranges and
// subqueries, grouping label lists, Grafana variables, keywords, numbers and
// durations, function and aggregation names) and keeps the identifiers left.
func promqlMetricNames(expr string) []string {
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`"(\\.|[^"\\])*"|'(\\.|[^'\\])*'|` + "`[^`]*`"),
		regexp.MustCompile(`\{[^}]*\}`),
		regexp.MustCompile(`\[[^\]]*\]`),
		regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`),
		regexp.MustCompile(`\$\{?\w+\}?`),
	} {
		expr = re.ReplaceAllString(expr, " ")
	}
	keywords := map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"bool": true, "offset": true, "and": true, "or": true, "unless": true, "atan2": true, "inf": true, "nan": true, "Inf": true, "NaN": true}
	var names []string
	ident := regexp.MustCompile(`[0-9.]*[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	for _, tok := range ident.FindAllString(expr, -1) {
		if strings.HasSuffix(tok, "(") || tok[0] >= '0' && tok[0] <= '9' || tok[0] == '.' || keywords[tok] {
			continue // a call, a number or duration, a keyword
		}
		names = append(names, tok)
	}
	return names
}

func TestPromQLMetricNames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		expr string
		want []string
	}{
		{`outbox_relay_kafka_unavailable == 1`, []string{"outbox_relay_kafka_unavailable"}},
		{`histogram_quantile(0.99, sum by (le) (rate(outbox_relay_delivery_latency_seconds_bucket{instance=~"$instance"}[$__rate_interval])))`,
			[]string{"outbox_relay_delivery_latency_seconds_bucket"}},
		{`sum without (instance, pod) (increase(a_total{topic="x y", problem!="by(z)"}[10m] offset 1h)) > bool 0 and on(job) group_left(version) b_info`,
			[]string{"a_total", "b_info"}},
		{`absent(outbox_relay_build_info) or vector(0) * 1e3 - time() + 5m`, []string{"outbox_relay_build_info"}},
		{`max(x) by (topic) / ignoring(kind) y unless z`, []string{"x", "y", "z"}},
	}
	for _, tt := range tests {
		if got := promqlMetricNames(tt.expr); !slices.Equal(got, tt.want) {
			t.Errorf("promqlMetricNames(%q) = %q, want %q", tt.expr, got, tt.want)
		}
	}
}

// checkExported fails for each metric that an expression of file names and
// the relay does not export.
func checkExported(t *testing.T, file string, exprs []string, exported map[string]bool) {
	t.Helper()
	if len(exprs) == 0 {
		t.Fatalf("%s: no expressions found", file)
	}
	for _, e := range exprs {
		names := promqlMetricNames(e)
		if len(names) == 0 {
			t.Errorf("%s: %q names no metric", file, e)
		}
		for _, n := range names {
			if !exported[n] {
				t.Errorf("%s: %q names %s, which the relay does not export", file, e, n)
			}
		}
	}
}

func TestAlertingRulesNameExportedMetrics(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	var exprs []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	checkExported(t, rulesFile, exprs, exportedMetrics(t))
}

// TestDashboardNamesExportedMetrics checks that every query of the Grafana
// dashboard, its variables' included, names only metrics the relay exports,
// and that each panel query follows the dashboard's instance variable.
func TestDashboardNamesExportedMetrics(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels     []dashboardPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var exprs []string
	var walk func([]dashboardPanel)
	walk = func(panels []dashboardPanel) {
		for _, p := range panels {
			for _, tg := range p.Targets {
				if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
					t.Errorf("%s: panel %q: %q does not follow $instance", dashboardFile, p.Title, tg.Expr)
				}
				exprs = append(exprs, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)

	// label_values(metric{…}, label): the metric is checked like a query.
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	vars := map[string]bool{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = true
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		m := labelValues.FindStringSubmatch(q)
		if m == nil {
			t.Errorf("%s: variable %s: query %q is not label_values(metric, label)", dashboardFile, v.Name, q)
			continue
		}
		exprs = append(exprs, m[1])
	}
	if !vars["instance"] || !vars["topic"] {
		t.Errorf("%s: variables %v, want instance and topic", dashboardFile, slices.Sorted(maps.Keys(vars)))
	}
	checkExported(t, dashboardFile, exprs, exportedMetrics(t))
}

type dashboardPanel struct {
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []dashboardPanel `json:"panels"`
}
