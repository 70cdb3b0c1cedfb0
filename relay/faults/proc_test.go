package faults

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	relaytest.RemoveRelayBinary()
	os.Exit(code)
}

// proc is one relay child process.
type proc struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	out    *tailBuffer
	exited chan struct{}
	// killed is set when the test killed it on purpose.
	killed bool
}

// tailBuffer keeps the last lines a process wrote, for failure reports, and
// notes whether the race detector spoke.
type tailBuffer struct {
	mu    sync.Mutex
	lines []string
	part  []byte
	race  bool
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.part = append(b.part, p...)
	for {
		i := bytes.IndexByte(b.part, '\n')
		if i < 0 {
			break
		}
		line := string(b.part[:i])
		b.part = b.part[i+1:]
		if strings.Contains(line, "WARNING: DATA RACE") {
			b.race = true
		}
		b.lines = append(b.lines, line)
		if len(b.lines) > 200 {
			b.lines = b.lines[len(b.lines)-100:]
		}
	}
	return len(p), nil
}

func (b *tailBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := b.lines
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// relayEnv is the environment of a relay on db's schema: small batches so
// many are in flight when a fault lands, quick polling and retries so a
// scenario's load drains in seconds.
// Its connections go to databaseURL (see relayDatabaseURL).
func relayEnv(db *relaytest.DB, databaseURL string, brokers []string, extra ...string) map[string]string {
	env := map[string]string{
		"RELAY_DATABASE_URL":           databaseURL,
		"RELAY_SCHEMA":                 db.Schema,
		"RELAY_KAFKA_BROKERS":          strings.Join(brokers, ","),
		"RELAY_HTTP_ADDR":              "127.0.0.1:0",
		"RELAY_LOG_LEVEL":              "info",
		"RELAY_BATCH_SIZE":             "100",
		"RELAY_POLL_INTERVAL":          "100ms",
		"RELAY_RETRY_BASE":             "100ms",
		"RELAY_RETRY_MAX":              "1s",
		"RELAY_SHUTDOWN_TIMEOUT":       "5s",
		"RELAY_OUTAGE_ALERT_AFTER":     "2s",
		"RELAY_PRODUCE_TIMEOUT":        "10s",
		"RELAY_MIGRATE_ON_START":       "true",
		"RELAY_CHECK_TOPIC_DURABILITY": "true",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

// relayDatabaseURL is db's URL with the application_name appName(db), so a
// test can find the relay's backends (and only them) in pg_stat_activity,
// and, unless host is empty, with host:port replaced (a proxy's).
func relayDatabaseURL(t *testing.T, db *relaytest.DB, host string) string {
	t.Helper()
	return relayDatabaseURLAs(t, db, host, appName(db))
}

// relayDatabaseURLAs is relayDatabaseURL with the application_name app.
func relayDatabaseURLAs(t *testing.T, db *relaytest.DB, host, app string) string {
	t.Helper()
	u, err := url.Parse(db.URL)
	if err != nil {
		t.Fatalf("database url: %v", err)
	}
	if host != "" {
		u.Host = host
	}
	q := u.Query()
	q.Set("application_name", app)
	u.RawQuery = q.Encode()
	return u.String()
}

// appName is the application_name of the relays of db's scenario.
func appName(db *relaytest.DB) string { return "faults-" + db.Schema }

// waitListening waits until n relays of db's scenario have their LISTEN
// connection in place: they are past start-up and running.
func waitListening(t *testing.T, db *relaytest.DB, n int) {
	t.Helper()
	relaytest.WaitFor(t, time.Minute, fmt.Sprintf("%d relays listening", n), func() bool {
		var got int
		err := db.Pool.QueryRow(context.Background(), `
			SELECT count(*) FROM pg_stat_activity
			WHERE starts_with(application_name, $1) AND query ILIKE 'LISTEN%'`, appName(db)).Scan(&got)
		if err != nil {
			t.Fatal(err)
		}
		return got >= n
	})
}

// startRelay starts "relay run" with exactly the RELAY_* variables of env.
// A process still running when the test ends is killed then.
func startRelay(t *testing.T, name string, env map[string]string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, out: &tailBuffer{}, exited: make(chan struct{})}
	p.cmd = relaytest.RelayCommand(t, env, "run")
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start relay %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		if p.running() {
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if p.out.race {
			t.Errorf("relay %s reported a data race:\n%s", name, p.out.tail(60))
		} else if t.Failed() {
			t.Logf("relay %s (pid %d) last output:\n%s", name, p.cmd.Process.Pid, p.out.tail(30))
		}
	})
	return p
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill9 ends the process with SIGKILL and waits for it to be gone.
func (p *proc) kill9() {
	p.t.Helper()
	p.killed = true
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		p.t.Fatalf("relay %s still running 10s after SIGKILL", p.name)
	}
}

// freeze stops the process (SIGSTOP) as a paused container or VM would: its
// sockets stay open. thaw lets it go on (SIGCONT).
func (p *proc) freeze() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		p.t.Fatalf("freeze relay %s: %v", p.name, err)
	}
}

func (p *proc) thaw() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		p.t.Fatalf("thaw relay %s: %v", p.name, err)
	}
}

// checkAlive fails the test if the relay exited without being killed: the
// relay must ride out transient faults, never exit on them.
func (p *proc) checkAlive() {
	p.t.Helper()
	if !p.killed && !p.running() {
		p.t.Errorf("relay %s exited on its own (%v) during a transient fault; last output:\n%s", p.name, p.cmd.ProcessState, p.out.tail(30))
	}
}

// stop sends SIGTERM and requires exit 0 within the shutdown timeout plus a
// margin.
func (p *proc) stop() {
	p.t.Helper()
	p.checkAlive()
	if !p.running() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			p.t.Errorf("relay %s exited %d after SIGTERM, want 0; last output:\n%s", p.name, code, p.out.tail(30))
		}
	case <-time.After(20 * time.Second):
		p.t.Errorf("relay %s still running 20s after SIGTERM", p.name)
	}
}
