package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// resetPeakRSS resets VmHWM to the current RSS (Linux 4.0+), so peakRSS
// reads the peak of one phase. Elsewhere it does nothing and the peak is
// the process's.
func resetPeakRSS() {
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// peakRSS is VmHWM in bytes, or 0 where /proc is missing.
func peakRSS() int64 {
	return procStatus("VmHWM:")
}

// procStatus reads a "kB" field of /proc/self/status in bytes.
func procStatus(field string) int64 {
	raw, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) >= 2 && string(f[0]) == field {
			kb, _ := strconv.ParseInt(string(f[1]), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// backendCPU sums the CPU time of the Postgres backends whose
// application_name starts with prefix, read from /proc (Postgres on this
// machine; 0 elsewhere). Each phase's pools are new, so their backends'
// whole life is the phase: this is the database's work for the variant
// (less a killed instance's, whose backends are gone).
func (e *env) backendCPU(ctx context.Context, prefix string) time.Duration {
	rs, err := e.pool.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE starts_with(application_name, $1)`, prefix)
	if err != nil {
		return 0
	}
	defer rs.Close()
	var total time.Duration
	for rs.Next() {
		var pid int32
		if rs.Scan(&pid) != nil {
			return 0
		}
		if d, ok := procCPU(int(pid)); ok {
			total += d
		}
	}
	return total
}

// brokerCPU is the CPU time of the broker's process so far, when the
// bench runs the broker on this machine.
func (e *env) brokerCPU() (time.Duration, bool) {
	if e.cfg.BrokerPID == nil {
		return 0, false
	}
	pid := e.cfg.BrokerPID()
	if pid == 0 {
		return 0, false
	}
	return procCPU(pid)
}

// procCPU reads the CPU time of process pid from /proc: the scheduler's
// nanosecond count when the kernel keeps one, else user plus system time in
// clock ticks. Ticks are 10 ms: a short phase's backends, each on CPU for a
// few ms, would read as 0.
func procCPU(pid int) (time.Duration, bool) {
	if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/schedstat", pid)); err == nil {
		if f := bytes.Fields(raw); len(f) > 0 {
			if ns, err := strconv.ParseInt(string(f[0]), 10, 64); err == nil {
				return time.Duration(ns), true
			}
		}
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// Fields after the parenthesised command: state is 3, utime 14,
	// stime 15 (1-based), in clock ticks of 1/100 s.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(raw[i+1:])
	if len(f) < 13 {
		return 0, false
	}
	ut, _ := strconv.ParseInt(string(f[11]), 10, 64)
	st, _ := strconv.ParseInt(string(f[12]), 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, true
}
