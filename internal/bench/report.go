package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"
)

// Report is the outcome of a run: per variant, every phase, the medians
// over rounds and the ratios of the medians against the baseline.
type Report struct {
	Scenario Scenario         `json:"scenario"`
	Variants []*VariantReport `json:"variants"`
}

// Scenario repeats what the run measured.
type Scenario struct {
	Preload       int     `json:"preload"`
	Rate          int     `json:"rate"`
	DurationSec   float64 `json:"duration_s"`
	RowsPerTx     int     `json:"rows_per_tx"`
	Writers       int     `json:"writers"`
	InsertStorm   bool    `json:"insert_storm,omitempty"`
	PayloadSize   int     `json:"payload_size"`
	Keys          int     `json:"keys"`
	Topics        int     `json:"topics"`
	Partitions    int     `json:"partitions"`
	BatchSize     int     `json:"batch_size"`
	InFlight      int     `json:"in_flight_batches"`
	ClaimLingerMs float64 `json:"claim_linger_ms,omitempty"`
	PoolSize      int     `json:"pool_size"`
	DeleteOnSend  bool    `json:"delete_on_send"`
	Wakeup        bool    `json:"wakeup"`
	Rounds        int     `json:"rounds"`
	VacuumSec     float64 `json:"vacuum_interval_s,omitempty"`
	PollMs        float64 `json:"poll_interval_ms"`
	// BrokerLatencyMs is the delay the bench's broker added to every
	// produce response (Config.BrokerLatency).
	BrokerLatencyMs float64 `json:"broker_latency_ms,omitempty"`
	// KillOneAfterSec is when, into each phase, one instance of each
	// relay variant was killed (Config.KillOneAfter).
	KillOneAfterSec float64 `json:"kill_one_after_s,omitempty"`
	// ExternalSchema is the outbox of the running relays the run
	// measured (Config.ExternalSchema). The relay settings above (batch
	// size to poll interval) are then the bench's defaults: the running
	// relays' own are unknown to it.
	ExternalSchema string `json:"external_schema,omitempty"`
	// TopicPrefix starts the name of every topic (and so of every row) of
	// the run. The rows stay in an external outbox after the run.
	TopicPrefix string `json:"topic_prefix"`
}

// VariantReport is one variant's phases and their medians. Ratio is
// median(this)/median(baseline) per figure; nil without a baseline or for
// the baseline itself.
type VariantReport struct {
	Name      string   `json:"name"`
	Instances int      `json:"instances"`
	Phases    []Phase  `json:"phases"`
	Median    Summary  `json:"median"`
	Ratio     *Summary `json:"ratio_vs_baseline,omitempty"`
	// RoundRatio is the median over rounds of this variant's rows/s over
	// the baseline's in the same round: less sensitive than the ratio of
	// medians to a neighbour that slowed one whole round down.
	RoundRatio float64 `json:"rows_per_s_round_ratio_median,omitempty"`
	// VsOneRelay is this variant's median rows/s over the single relay's,
	// when the run measured both.
	VsOneRelay float64 `json:"rows_per_s_vs_one_relay,omitempty"`
}

// Phase is one measurement of one variant.
type Phase struct {
	Round      int      `json:"round"`
	Rows       int64    `json:"rows"`
	Streamed   int64    `json:"streamed"`
	Seconds    float64  `json:"seconds"`
	RowsPerSec float64  `json:"rows_per_s"`
	InsertRate float64  `json:"insert_rows_per_s,omitempty"`
	Latency    *Latency `json:"commit_to_ack,omitempty"`
	CPUSeconds float64  `json:"cpu_s,omitempty"`
	CPUMsPer1k float64  `json:"cpu_ms_per_1k_rows,omitempty"`
	// PGCPUMsPer1k is the CPU time of the variant's own Postgres
	// backends per 1000 rows (when Postgres runs on this machine).
	PGCPUMsPer1k float64 `json:"pg_cpu_ms_per_1k_rows,omitempty"`
	// WriterPGCPUMsPer1k is the CPU time of the writers' Postgres
	// backends per 1000 rows they inserted, and PGCPUVsWriters the
	// variant's per delivered row over it: what delivery costs the
	// database against what writing the rows costs it.
	WriterPGCPUMsPer1k float64 `json:"writer_pg_cpu_ms_per_1k_rows,omitempty"`
	PGCPUVsWriters     float64 `json:"pg_cpu_vs_writers,omitempty"`
	// BrokerCPUMsPer1k is the CPU time of the broker's process per 1000
	// rows, when the bench runs the broker (not during an outage phase,
	// whose broker is restarted).
	BrokerCPUMsPer1k float64 `json:"broker_cpu_ms_per_1k_rows,omitempty"`
	PeakRSSMiB       float64 `json:"peak_rss_mib,omitempty"`
	// OutageRSSMiB is the peak RSS from the phase start to the end of
	// the Kafka outage, if there was one.
	OutageRSSMiB float64 `json:"outage_peak_rss_mib,omitempty"`
	ForeignAcks  int64   `json:"foreign_acks,omitempty"`
	// Kill is what the kill of one instance did; nil if the phase had
	// none (or ended before it).
	Kill  *Kill  `json:"kill,omitempty"`
	Check *Check `json:"check,omitempty"`
}

// Kill is one instance killed mid-phase and the survivors taking over its
// share: the rows it had handed to its Kafka client and not marked sent,
// which only the others could deliver after the kill.
type Kill struct {
	// Instance is the killed instance's application_name.
	Instance string `json:"instance"`
	// AtSec is when the kill began (its connections closed), since the
	// phase started.
	AtSec float64 `json:"at_s"`
	// RowsTakenOver is the size of its share.
	RowsTakenOver int `json:"rows_taken_over"`
	// TakeoverMs runs from the kill to the moment a survivor received
	// Kafka's acknowledgement of the last row of the share; 0 if the
	// share was empty.
	TakeoverMs float64 `json:"takeover_ms"`
	// TakeoverPollIntervals is TakeoverMs in poll intervals. The target:
	// at most 2.
	TakeoverPollIntervals float64 `json:"takeover_poll_intervals"`
}

// Latency is commit→ack (commit→consumed with external relays) of the
// streamed rows after the warm-up.
type Latency struct {
	// Until is where it ends: "ack", the producing client received the
	// broker's acknowledgement; or "consumed", with external relays, the
	// bench's consumer read the record (so it includes the consumer's
	// fetch delay).
	Until string  `json:"until"`
	Rows  int     `json:"rows"`
	P50Ms float64 `json:"p50_ms"`
	P90Ms float64 `json:"p90_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
	// AckedBeforeCommitReturned counts rows acknowledged before their
	// writer's COMMIT returned (counted as 0 ms).
	AckedBeforeCommitReturned int `json:"acked_before_commit_returned"`
}

// Check is what the consumer found after the phase.
type Check struct {
	Records int `json:"records"`
	// Duplicates are extra copies of rows outside a killed instance's
	// share: there must be none.
	Duplicates int `json:"duplicates"`
	// DuplicatesAfterKill are extra copies of the rows in a killed
	// instance's share, which at-least-once allows.
	DuplicatesAfterKill int `json:"duplicates_after_kill,omitempty"`
	OrderViolations     int `json:"order_violations"`
	Missing             int `json:"missing"`
	Foreign             int `json:"foreign"`
}

// Summary holds the medians (or ratios of medians) of a variant's figures.
// Check counts are sums over the phases.
type Summary struct {
	RowsPerSec      float64 `json:"rows_per_s"`
	InsertRate      float64 `json:"insert_rows_per_s,omitempty"`
	P50Ms           float64 `json:"p50_ms,omitempty"`
	P90Ms           float64 `json:"p90_ms,omitempty"`
	P99Ms           float64 `json:"p99_ms,omitempty"`
	MaxMs           float64 `json:"max_ms,omitempty"`
	CPUMsPer1k      float64 `json:"cpu_ms_per_1k_rows,omitempty"`
	PGCPUMsPer1k    float64 `json:"pg_cpu_ms_per_1k_rows,omitempty"`
	WriterPGCPUMs1k float64 `json:"writer_pg_cpu_ms_per_1k_rows,omitempty"`
	PGCPUVsWriters  float64 `json:"pg_cpu_vs_writers,omitempty"`
	BrokerCPUMs1k   float64 `json:"broker_cpu_ms_per_1k_rows,omitempty"`
	PeakRSSMiB      float64 `json:"peak_rss_mib,omitempty"`
	Duplicates      int     `json:"duplicates"`
	OrderViolations int     `json:"order_violations"`
	Missing         int     `json:"missing"`
	// Over the phases with a kill: how many there were, the median and
	// the longest takeover, the median share, and the duplicates of the
	// shares (a sum).
	Kills               int     `json:"kills,omitempty"`
	TakeoverMs          float64 `json:"takeover_ms,omitempty"`
	TakeoverMaxMs       float64 `json:"takeover_max_ms,omitempty"`
	RowsTakenOver       float64 `json:"rows_taken_over,omitempty"`
	DuplicatesAfterKill int     `json:"duplicates_after_kill,omitempty"`
}

// summary is the phase's line on the progress output. Without details it
// fits 100 columns next to its "round N variant" prefix.
func (p Phase) summary(details bool) string {
	if !details {
		return p.shortSummary()
	}
	s := fmt.Sprintf("%8d rows in %6.2fs: %8.0f rows/s", p.Rows, p.Seconds, p.RowsPerSec)
	if p.CPUSeconds > 0 || p.PeakRSSMiB > 0 { // not measured for external relays
		s += fmt.Sprintf(", cpu %6.0f ms/1k rows (postgres %4.0f, broker %4.1f), peak rss %5.0f MiB", p.CPUMsPer1k, p.PGCPUMsPer1k, p.BrokerCPUMsPer1k, p.PeakRSSMiB)
	}
	if p.WriterPGCPUMsPer1k > 0 {
		s += fmt.Sprintf(", writers' postgres %4.0f ms/1k rows (ratio %.2f)", p.WriterPGCPUMsPer1k, p.PGCPUVsWriters)
	}
	if p.OutageRSSMiB > 0 {
		s += fmt.Sprintf(" (%.0f MiB during the outage)", p.OutageRSSMiB)
	}
	if p.InsertRate > 0 {
		s += fmt.Sprintf(", insert %6.0f rows/s", p.InsertRate)
	}
	if l := p.Latency; l != nil {
		s += fmt.Sprintf(", commit→%s p50 %.1fms p99 %.1fms max %.1fms", l.Until, l.P50Ms, l.P99Ms, l.MaxMs)
	}
	if k := p.Kill; k != nil {
		s += fmt.Sprintf(", killed %s at %.2fs: %d rows taken over in %.0fms", k.Instance, k.AtSec, k.RowsTakenOver, k.TakeoverMs)
	}
	if c := p.Check; c != nil {
		s += fmt.Sprintf(", dup %d, order violations %d, missing %d", c.Duplicates, c.OrderViolations, c.Missing)
		if p.Kill != nil {
			s += fmt.Sprintf(", dup after kill %d", c.DuplicatesAfterKill)
		}
	}
	return s
}

func (p Phase) shortSummary() string {
	s := fmt.Sprintf("%7d rows in %6.2fs: %7.0f rows/s", p.Rows, p.Seconds, p.RowsPerSec)
	if l := p.Latency; l != nil {
		s += fmt.Sprintf(", p99 %.0fms", l.P99Ms)
	}
	if k := p.Kill; k != nil {
		s += fmt.Sprintf(", %d rows taken over in %.0fms", k.RowsTakenOver, k.TakeoverMs)
	}
	if c := p.Check; c != nil {
		s += fmt.Sprintf(", dup %d order %d missing %d", c.Duplicates, c.OrderViolations, c.Missing)
	}
	return s
}

func newReport(cfg Config, runID string, variants []*variant) *Report {
	r := &Report{Scenario: Scenario{
		Preload: cfg.Preload, Rate: cfg.Rate, RowsPerTx: cfg.RowsPerTx, Writers: cfg.Writers,
		PayloadSize: cfg.PayloadSize, Keys: cfg.Keys, Topics: cfg.Topics, Partitions: cfg.Partitions,
		BatchSize: cfg.BatchSize, InFlight: cfg.InFlightBatches, PoolSize: cfg.PoolSize, DeleteOnSend: cfg.DeleteOnSend,
		Wakeup: !cfg.DisableWakeup, Rounds: cfg.Rounds, VacuumSec: cfg.VacuumInterval.Seconds(),
		PollMs: float64(cfg.PollInterval) / float64(time.Millisecond), ClaimLingerMs: float64(cfg.ClaimLinger) / float64(time.Millisecond), KillOneAfterSec: cfg.KillOneAfter.Seconds(),
		BrokerLatencyMs: float64(cfg.BrokerLatency) / float64(time.Millisecond), ExternalSchema: cfg.ExternalSchema, TopicPrefix: runID + "-",
	}}
	if cfg.Rate > 0 || cfg.InsertStorm {
		r.Scenario.DurationSec = cfg.Duration.Seconds()
	}
	r.Scenario.InsertStorm = cfg.InsertStorm
	var base, one *VariantReport
	for _, v := range variants {
		vr := &VariantReport{Name: v.name, Instances: v.instances, Phases: v.phases, Median: medians(v.phases)}
		r.Variants = append(r.Variants, vr)
		if v.reference {
			base = vr
		} else if v.instances == 1 {
			one = vr
		}
	}
	for _, vr := range r.Variants {
		if vr == base {
			continue
		}
		if base != nil {
			ratio := ratios(vr.Median, base.Median)
			vr.Ratio = &ratio
			var rr []float64
			for i := range min(len(vr.Phases), len(base.Phases)) {
				rr = append(rr, vr.Phases[i].RowsPerSec/base.Phases[i].RowsPerSec)
			}
			vr.RoundRatio = median(rr)
		}
		if one != nil && vr != one {
			vr.VsOneRelay = vr.Median.RowsPerSec / one.Median.RowsPerSec
		}
	}
	return r
}

func medians(ps []Phase) Summary {
	pick := func(f func(Phase) float64) float64 {
		xs := make([]float64, 0, len(ps))
		for _, p := range ps {
			xs = append(xs, f(p))
		}
		return median(xs)
	}
	lat := func(f func(*Latency) float64) func(Phase) float64 {
		return func(p Phase) float64 {
			if p.Latency == nil {
				return 0
			}
			return f(p.Latency)
		}
	}
	s := Summary{
		RowsPerSec:      pick(func(p Phase) float64 { return p.RowsPerSec }),
		InsertRate:      pick(func(p Phase) float64 { return p.InsertRate }),
		P50Ms:           pick(lat(func(l *Latency) float64 { return l.P50Ms })),
		P90Ms:           pick(lat(func(l *Latency) float64 { return l.P90Ms })),
		P99Ms:           pick(lat(func(l *Latency) float64 { return l.P99Ms })),
		MaxMs:           pick(lat(func(l *Latency) float64 { return l.MaxMs })),
		CPUMsPer1k:      pick(func(p Phase) float64 { return p.CPUMsPer1k }),
		PGCPUMsPer1k:    pick(func(p Phase) float64 { return p.PGCPUMsPer1k }),
		WriterPGCPUMs1k: pick(func(p Phase) float64 { return p.WriterPGCPUMsPer1k }),
		PGCPUVsWriters:  pick(func(p Phase) float64 { return p.PGCPUVsWriters }),
		BrokerCPUMs1k:   pick(func(p Phase) float64 { return p.BrokerCPUMsPer1k }),
		PeakRSSMiB:      pick(func(p Phase) float64 { return p.PeakRSSMiB }),
	}
	var takeovers, shares []float64
	for _, p := range ps {
		if c := p.Check; c != nil {
			s.Duplicates += c.Duplicates
			s.DuplicatesAfterKill += c.DuplicatesAfterKill
			s.OrderViolations += c.OrderViolations
			s.Missing += c.Missing
		}
		if k := p.Kill; k != nil {
			s.Kills++
			takeovers = append(takeovers, k.TakeoverMs)
			shares = append(shares, float64(k.RowsTakenOver))
		}
	}
	s.TakeoverMs, s.RowsTakenOver = median(takeovers), median(shares)
	if len(takeovers) > 0 {
		s.TakeoverMaxMs = slices.Max(takeovers)
	}
	return s
}

func ratios(a, b Summary) Summary {
	div := func(x, y float64) float64 {
		if y == 0 {
			return 0
		}
		return x / y
	}
	return Summary{
		RowsPerSec:      div(a.RowsPerSec, b.RowsPerSec),
		InsertRate:      div(a.InsertRate, b.InsertRate),
		P50Ms:           div(a.P50Ms, b.P50Ms),
		P90Ms:           div(a.P90Ms, b.P90Ms),
		P99Ms:           div(a.P99Ms, b.P99Ms),
		MaxMs:           div(a.MaxMs, b.MaxMs),
		CPUMsPer1k:      div(a.CPUMsPer1k, b.CPUMsPer1k),
		PGCPUMsPer1k:    div(a.PGCPUMsPer1k, b.PGCPUMsPer1k),
		WriterPGCPUMs1k: div(a.WriterPGCPUMs1k, b.WriterPGCPUMs1k),
		PGCPUVsWriters:  div(a.PGCPUVsWriters, b.PGCPUVsWriters),
		BrokerCPUMs1k:   div(a.BrokerCPUMs1k, b.BrokerCPUMs1k),
		PeakRSSMiB:      div(a.PeakRSSMiB, b.PeakRSSMiB),
	}
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// WriteTable prints the medians, one line per variant, with the ratio of
// medians against the baseline under each relay variant. Its lines fit 100
// columns; details adds the p90 and the CPU of Postgres and the broker,
// which make them wider. The JSON report has every figure.
func (r *Report) WriteTable(w io.Writer, details bool) error {
	sc := r.Scenario
	fmt.Fprintln(w)
	r.writeSettings(w)
	r.writeLegend(w, details)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	num := func(x float64, prec int) string {
		if x == 0 || math.IsNaN(x) {
			return "-"
		}
		return fmt.Sprintf("%.*f", prec, x)
	}
	// cols: the header, then the median's and the ratio's cells.
	type col struct {
		head   string
		median func(Summary) string
		ratio  func(Summary) string
	}
	f := func(head string, get func(Summary) float64, prec, ratioPrec int) col {
		return col{head, func(s Summary) string { return num(get(s), prec) }, func(s Summary) string { return num(get(s), ratioPrec) }}
	}
	cols := []col{
		f("rows/s", func(s Summary) float64 { return s.RowsPerSec }, 0, 2),
		f("insert/s", func(s Summary) float64 { return s.InsertRate }, 0, 2),
		f("p50 ms", func(s Summary) float64 { return s.P50Ms }, 1, 3),
	}
	if details {
		cols = append(cols, f("p90 ms", func(s Summary) float64 { return s.P90Ms }, 1, 3))
	}
	cols = append(cols,
		f("p99 ms", func(s Summary) float64 { return s.P99Ms }, 1, 3),
		f("max ms", func(s Summary) float64 { return s.MaxMs }, 1, 3),
		f("cpu/1k", func(s Summary) float64 { return s.CPUMsPer1k }, 0, 2))
	if details {
		cols = append(cols,
			f("pg cpu/1k", func(s Summary) float64 { return s.PGCPUMsPer1k }, 0, 2),
			f("writers' pg cpu/1k", func(s Summary) float64 { return s.WriterPGCPUMs1k }, 0, 2),
			f("pg cpu vs writers", func(s Summary) float64 { return s.PGCPUVsWriters }, 2, 2),
			f("broker cpu/1k", func(s Summary) float64 { return s.BrokerCPUMs1k }, 1, 2))
	}
	cols = append(cols, f("rss MiB", func(s Summary) float64 { return s.PeakRSSMiB }, 0, 2))
	counts := []col{
		{"dup", func(s Summary) string { return fmt.Sprint(s.Duplicates) }, func(Summary) string { return "" }},
		{"order", func(s Summary) string { return fmt.Sprint(s.OrderViolations) }, func(Summary) string { return "" }},
		{"miss", func(s Summary) string { return fmt.Sprint(s.Missing) }, func(Summary) string { return "" }},
	}
	cols = append(cols, counts...)
	// The names are padded to one width, so they read left-aligned.
	width := len("variant")
	for _, v := range r.Variants {
		width = max(width, utf8.RuneCountInString(v.Name), len("  per-round ratio"), utf8.RuneCountInString("  vs "+r.Variants[0].Name))
	}
	row := func(name string, cells func(col) string) {
		fmt.Fprintf(tw, "%-*s\t", width, name)
		for _, c := range cols {
			fmt.Fprint(tw, cells(c), "\t")
		}
		fmt.Fprintln(tw)
	}
	row("variant", func(c col) string { return c.head })
	for _, v := range r.Variants {
		row(v.Name, func(c col) string { return c.median(v.Median) })
		if q := v.Ratio; q != nil {
			row("  vs "+r.Variants[0].Name, func(c col) string { return c.ratio(*q) })
		}
		if v.RoundRatio > 0 {
			row("  per-round ratio", func(c col) string {
				if c.head == "rows/s" {
					return num(v.RoundRatio, 2)
				}
				return ""
			})
		}
		if v.VsOneRelay > 0 {
			row("  vs relay x1", func(c col) string {
				if c.head == "rows/s" {
					return num(v.VsOneRelay, 2)
				}
				return ""
			})
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var rounds []string
	for _, v := range r.Variants {
		var xs []string
		for _, p := range v.Phases {
			xs = append(xs, fmt.Sprintf("%.0f", p.RowsPerSec))
		}
		rounds = append(rounds, fmt.Sprintf("%s: %s", v.Name, strings.Join(xs, " ")))
	}
	sep := "; "
	if line := strings.Join(rounds, sep); utf8.RuneCountInString(line) > 100-len("rows/s per round: ") {
		sep = "\n  " // one line per variant
		rounds[0] = sep[1:] + rounds[0]
	}
	if _, err := fmt.Fprintf(w, "\nrows/s per round: %s\n", strings.Join(rounds, sep)); err != nil {
		return err
	}
	if sc.KillOneAfterSec > 0 {
		return r.writeKills(w)
	}
	return nil
}

// writeSettings describes the run: what the bench does in each phase and
// with which settings. Its lines fit 100 columns.
func (r *Report) writeSettings(w io.Writer) {
	sc := r.Scenario
	fmt.Fprintln(w, "settings:")
	if sc.ExternalSchema != "" {
		fmt.Fprintf(w, "  relays already running on schema %s (not started by the bench)\n", sc.ExternalSchema)
	}
	fmt.Fprintf(w, "  preload %d rows per phase\n", sc.Preload)
	switch {
	case sc.InsertStorm:
		fmt.Fprintf(w, "  insert storm for %gs: %d writers as fast as they can, %d-row transactions\n", sc.DurationSec, sc.Writers, sc.RowsPerTx)
	case sc.Rate > 0:
		fmt.Fprintf(w, "  stream %d rows/s for %gs: %d writers, %d-row transactions\n", sc.Rate, sc.DurationSec, sc.Writers, sc.RowsPerTx)
	}
	fmt.Fprintf(w, "  payload %d B, %d keys, %d topic(s) × %d partitions; %d round(s), medians\n",
		sc.PayloadSize, sc.Keys, sc.Topics, sc.Partitions, sc.Rounds)
	if sc.ExternalSchema == "" {
		fmt.Fprintf(w, "  relay: batch %d, in-flight %s, pool %s, poll %gms, wake-up %v, delete-on-send %v\n",
			sc.BatchSize, orDefault(sc.InFlight), orDefault(sc.PoolSize), sc.PollMs, sc.Wakeup, sc.DeleteOnSend)
		fmt.Fprintf(w, "  broker latency %gms; claim linger %gms; vacuum every %gs (0: never)", sc.BrokerLatencyMs, sc.ClaimLingerMs, sc.VacuumSec)
		if sc.KillOneAfterSec > 0 {
			fmt.Fprintf(w, "; kill one instance %gs into each phase", sc.KillOneAfterSec)
		}
		fmt.Fprintln(w)
	}
}

// writeLegend says what the table's columns mean.
func (r *Report) writeLegend(w io.Writer, details bool) {
	sc := r.Scenario
	if sc.ExternalSchema != "" {
		fmt.Fprint(w, "rows/s: until the bench consumed every row from Kafka and none is pending;\n"+
			"p50…max: commit→consumed, including the consumer's fetch delay;\n"+
			"cpu and rss: the relays' are not the bench's to measure (-)\n\n")
		return
	}
	fmt.Fprintln(w, "cpu/1k: this process's CPU ms per 1k rows; rss: its peak; --details for more")
	if details {
		fmt.Fprint(w, "pg cpu: the variant's Postgres backends per 1k rows delivered;\n"+
			"writers' pg cpu: the writers' backends per 1k rows inserted;\n"+
			"pg cpu vs writers: the first over the second\n")
	}
	if sc.InsertStorm {
		fmt.Fprint(w, "no wake-up: the relay with its wake-up off and the wake-up trigger disabled,\n"+
			"the reference of the insert rate\n")
	}
	fmt.Fprintln(w)
}

// writeKills prints the takeover of each relay variant against its target:
// the survivors deliver the killed instance's share within two poll
// intervals, in every round.
func (r *Report) writeKills(w io.Writer) error {
	sc := r.Scenario
	fmt.Fprintf(w, "\nkill: one instance of each relay variant, %gs into each phase (once it has records\n"+
		"in flight to Kafka); takeover target ≤ 2 poll intervals = %.0f ms\n\n",
		sc.KillOneAfterSec, 2*sc.PollMs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "variant\tkilled in rounds\trows taken over\ttakeover ms\tmax ms\tmax polls\tdup after kill\tmet\t")
	for _, v := range r.Variants {
		m := v.Median
		if v.Instances < 2 {
			continue
		}
		met := "no"
		if m.Kills == len(v.Phases) && m.TakeoverMaxMs > 0 && m.TakeoverMaxMs <= 2*sc.PollMs {
			met = "yes"
		}
		fmt.Fprintf(tw, "%s\t%d of %d\t%.0f\t%.0f\t%.0f\t%.2f\t%d\t%s\t\n", v.Name, m.Kills, len(v.Phases),
			m.RowsTakenOver, m.TakeoverMs, m.TakeoverMaxMs, m.TakeoverMaxMs/sc.PollMs, m.DuplicatesAfterKill, met)
	}
	return tw.Flush()
}

func orDefault(n int) string {
	if n == 0 {
		return "default"
	}
	return fmt.Sprint(n)
}
