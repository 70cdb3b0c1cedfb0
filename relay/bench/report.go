package bench

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the outcome of a run: per variant, every phase, the medians
// over rounds and the ratios of the medians against the baseline.
type Report struct {
	Scenario Scenario         `json:"scenario"`
	Variants []*VariantReport `json:"variants"`
}

// Scenario repeats what the run measured.
type Scenario struct {
	Preload      int     `json:"preload"`
	Rate         int     `json:"rate"`
	DurationSec  float64 `json:"duration_s"`
	RowsPerTx    int     `json:"rows_per_tx"`
	Writers      int     `json:"writers"`
	InsertStorm  bool    `json:"insert_storm,omitempty"`
	PayloadSize  int     `json:"payload_size"`
	Keys         int     `json:"keys"`
	Topics       int     `json:"topics"`
	Partitions   int     `json:"partitions"`
	BatchSize    int     `json:"batch_size"`
	InFlight     int     `json:"in_flight_batches"`
	PoolSize     int     `json:"pool_size"`
	DeleteOnSend bool    `json:"delete_on_send"`
	Wakeup       bool    `json:"wakeup"`
	Rounds       int     `json:"rounds"`
	VacuumSec    float64 `json:"vacuum_interval_s,omitempty"`
	PollMs       float64 `json:"poll_interval_ms"`
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

func (p Phase) summary() string {
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

func newReport(cfg Config, runID string, variants []*variant) *Report {
	r := &Report{Scenario: Scenario{
		Preload: cfg.Preload, Rate: cfg.Rate, RowsPerTx: cfg.RowsPerTx, Writers: cfg.Writers,
		PayloadSize: cfg.PayloadSize, Keys: cfg.Keys, Topics: cfg.Topics, Partitions: cfg.Partitions,
		BatchSize: cfg.BatchSize, InFlight: cfg.InFlightBatches, PoolSize: cfg.PoolSize, DeleteOnSend: cfg.DeleteOnSend,
		Wakeup: !cfg.DisableWakeup, Rounds: cfg.Rounds, VacuumSec: cfg.VacuumInterval.Seconds(),
		PollMs: float64(cfg.PollInterval) / float64(time.Millisecond), KillOneAfterSec: cfg.KillOneAfter.Seconds(),
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
// medians against the baseline under each relay variant.
func (r *Report) WriteTable(w io.Writer) error {
	sc := r.Scenario
	if sc.ExternalSchema != "" {
		r.writeExternalHeader(w)
	} else {
		r.writeHeader(w)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "variant\trows/s\tinsert rows/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\tcpu ms/1k rows\tpg cpu ms/1k\twriters' pg cpu ms/1k\tpg cpu vs writers\tbroker cpu ms/1k\tpeak rss MiB\tdup\torder viol.\tmissing\t")
	num := func(x float64, prec int) string {
		if x == 0 || math.IsNaN(x) {
			return "-"
		}
		return fmt.Sprintf("%.*f", prec, x)
	}
	for _, v := range r.Variants {
		m := v.Median
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t\n", v.Name,
			num(m.RowsPerSec, 0), num(m.InsertRate, 0), num(m.P50Ms, 1), num(m.P90Ms, 1), num(m.P99Ms, 1), num(m.MaxMs, 1),
			num(m.CPUMsPer1k, 0), num(m.PGCPUMsPer1k, 0), num(m.WriterPGCPUMs1k, 0), num(m.PGCPUVsWriters, 2), num(m.BrokerCPUMs1k, 1), num(m.PeakRSSMiB, 0), m.Duplicates, m.OrderViolations, m.Missing)
		if q := v.Ratio; q != nil {
			fmt.Fprintf(tw, "  ratio vs %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\t\t\t\n", r.Variants[0].Name,
				num(q.RowsPerSec, 2), num(q.InsertRate, 2), num(q.P50Ms, 3), num(q.P90Ms, 3), num(q.P99Ms, 3), num(q.MaxMs, 3),
				num(q.CPUMsPer1k, 2), num(q.PGCPUMsPer1k, 2), num(q.WriterPGCPUMs1k, 2), num(q.PGCPUVsWriters, 2), num(q.BrokerCPUMs1k, 2), num(q.PeakRSSMiB, 2))
		}
		if v.RoundRatio > 0 {
			fmt.Fprintf(tw, "  median of per-round ratios\t%s\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n", num(v.RoundRatio, 2))
		}
		if v.VsOneRelay > 0 {
			fmt.Fprintf(tw, "  rows/s vs relay x1\t%s\t\t\t\t\t\t\t\t\t\t\t\t\t\t\t\n", num(v.VsOneRelay, 2))
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
	if _, err := fmt.Fprintf(w, "\nrows/s per round: %s\n", strings.Join(rounds, "; ")); err != nil {
		return err
	}
	if sc.KillOneAfterSec > 0 {
		return r.writeKills(w)
	}
	return nil
}

// writeHeader describes a run of the bench's own relays.
func (r *Report) writeHeader(w io.Writer) {
	sc := r.Scenario
	stream := fmt.Sprintf("stream %d rows/s", sc.Rate)
	if sc.InsertStorm {
		stream = "insert storm (as fast as the writers can)"
	}
	fmt.Fprintf(w, "\npreload %d rows, %s for %gs in %d-row transactions (%d writers); payload %d B, %d keys, %d topic(s) × %d partitions; batch %d, in-flight %s, pool %s, delete-on-send %v, wake-up %v, vacuum every %gs (0: never); medians of %d rounds",
		sc.Preload, stream, sc.DurationSec, sc.RowsPerTx, sc.Writers, sc.PayloadSize, sc.Keys, sc.Topics, sc.Partitions,
		sc.BatchSize, orDefault(sc.InFlight), orDefault(sc.PoolSize), sc.DeleteOnSend, sc.Wakeup, sc.VacuumSec, sc.Rounds)
	if sc.BrokerLatencyMs > 0 {
		fmt.Fprintf(w, "; the broker answers each produce request %gms late", sc.BrokerLatencyMs)
	}
	fmt.Fprint(w, "\npg cpu: the variant's Postgres backends per 1k rows delivered; writers' pg cpu: the writers' backends per 1k rows inserted; pg cpu vs writers: the first over the second")
	if sc.InsertStorm {
		fmt.Fprint(w, "\nno wake-up: the relay with its wake-up off and the wake-up trigger disabled, the reference of the insert rate")
	}
	fmt.Fprint(w, "\n\n")
}

// writeExternalHeader describes a run against relays already running, and
// what its figures mean there.
func (r *Report) writeExternalHeader(w io.Writer) {
	sc := r.Scenario
	fmt.Fprintf(w, "\nrelays already running on schema %s (not started by the bench); preload %d rows, stream %d rows/s for %gs in %d-row transactions (%d writers); payload %d B, %d keys, %d topic(s) × %d partitions; medians of %d rounds\n",
		sc.ExternalSchema, sc.Preload, sc.Rate, sc.DurationSec, sc.RowsPerTx, sc.Writers, sc.PayloadSize, sc.Keys, sc.Topics, sc.Partitions, sc.Rounds)
	fmt.Fprintf(w, "rows/s: until the bench consumed every row from Kafka and none is pending; p50…max: commit→consumed, including the consumer's fetch delay; cpu and rss: the relays' are not the bench's to measure (-)\n\n")
}

// writeKills prints the takeover of each relay variant against its target:
// the survivors deliver the killed instance's share within two poll
// intervals, in every round.
func (r *Report) writeKills(w io.Writer) error {
	sc := r.Scenario
	fmt.Fprintf(w, "\nkill: one instance of each relay variant, %gs into each phase (once it has records in flight to Kafka); takeover target ≤ 2 poll intervals = %.0f ms\n\n",
		sc.KillOneAfterSec, 2*sc.PollMs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "variant\tkilled in rounds\trows taken over\ttakeover ms\tmax ms\tmax poll intervals\tdup after kill\tmet\t")
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
