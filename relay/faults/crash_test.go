package faults

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
)

// Scenario 8: Postgres itself crashes (an immediate shutdown: no
// checkpoint, the WAL still in its buffers is gone) and restarts, three
// times (or for RELAY_SOAK), each right after the relay committed its last batch. The relay
// commits its batches asynchronously (docs/architecture.md), so the crash
// undoes its last commits: the rows of those batches, already in Kafka, are
// pending again and produced again, duplicates with the same outbox-id. No
// row may be lost, each key's first deliveries stay in id order, and the
// relay, which outlives each crash, reconnects on its own. The application's
// commits are synchronous and survive.
//
// The scenario runs a Postgres cluster of its own (the shared test server
// must not crash under the other tests), whose WAL writer writes every 10s,
// so that the relay's last commits are still in the WAL buffers when it
// crashes.
func TestPostgresCrashUndoesTheRelaysLastCommits(t *testing.T) {
	t.Parallel()
	pg := startPrivatePostgres(t)
	db := relaytest.NewDBAt(t, pg.url)
	topics := []string{"orders", "payments"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()
	p := startRelay(t, "relay", relayEnv(db, relayDatabaseURL(t, db, ""), brokers))
	waitListening(t, db, 1)

	rows := map[int64]relaytest.Message{}
	var rolledBack int64
	crashes := 0
	for deadline := time.Now().Add(loadDuration(t, 0)); crashes < 3 || time.Now().Before(deadline); crashes++ {
		l := startLoad(t, db, topics, 4)
		pause(jitter(time.Second))
		o := l.stop()
		for id, m := range o.rows {
			rows[id] = m
		}
		rolledBack += o.rolledBack
		// The relay delivers what the load wrote; its last commit is then
		// the newest WAL record, and the crash comes right after it.
		relaytest.WaitFor(t, time.Minute, "every row sent", func() bool { return db.Count(t, "pending") == 0 })
		pg.crash(t)
		pg.start(t)
		db.Pool.Reset() // the application's connections died with the server
		p.checkAlive()
	}
	dups := checkInvariants(t, outcome{db: db, brokers: brokers, topics: topics, rows: rows, rolledBack: rolledBack,
		faults: crashes, kinds: "immediate shutdown and restart of Postgres"})
	if dups == 0 && !t.Failed() {
		t.Errorf("no row reached Kafka twice: the crashes undid none of the relay's commits, so nothing here was recovered")
	}
	p.checkAlive()
}

// privatePostgres is a Postgres cluster of one test's own, in a temporary
// directory, on a free port.
type privatePostgres struct {
	url       string
	data, run string
	ctl       string // pg_ctl
	opts      string
	asUser    []string // runuser prefix when the tests run as root
}

// startPrivatePostgres creates and starts a cluster with the server
// binaries of the machine's Postgres (initdb, pg_ctl: on PATH, or under
// /usr/lib/postgresql/*/bin as Debian installs them). It is stopped and
// removed when the test ends.
func startPrivatePostgres(t *testing.T) *privatePostgres {
	t.Helper()
	bin := postgresBinDir(t)
	dir, err := os.MkdirTemp("", "relay-faults-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	pg := &privatePostgres{data: filepath.Join(dir, "data"), run: filepath.Join(dir, "run")}
	for _, d := range []string{pg.data, pg.run} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if os.Geteuid() == 0 {
		// initdb refuses to run as root: the cluster belongs to postgres.
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, the private cluster needs the postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, d := range []string{dir, pg.data, pg.run} {
			if err := os.Chown(d, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		pg.asUser = []string{"runuser", "-u", "postgres", "--"}
	}
	port := freePort(t)
	pg.opts = fmt.Sprintf("-c port=%d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s "+
		"-c wal_writer_delay=10s -c max_connections=40 -c shared_buffers=32MB -c autovacuum=off", port, pg.run)
	pg.url = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	pg.cmd(t, filepath.Join(bin, "initdb"), "-D", pg.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	pg.ctl = filepath.Join(bin, "pg_ctl")
	pg.start(t)
	t.Cleanup(func() { pg.crash(t) })
	return pg
}

// start starts the cluster and waits until it accepts connections.
func (pg *privatePostgres) start(t *testing.T) {
	t.Helper()
	pg.cmd(t, pg.ctl, "start", "-w", "-t", "60", "-D", pg.data, "-l", filepath.Join(pg.run, "log"), "-o", pg.opts)
}

// crash stops the cluster as a crash would: every process killed at once,
// no checkpoint, the WAL buffers lost. Its restart replays the WAL on disk.
func (pg *privatePostgres) crash(t *testing.T) {
	t.Helper()
	pg.cmd(t, pg.ctl, "stop", "-w", "-t", "60", "-m", "immediate", "-D", pg.data)
}

func (pg *privatePostgres) cmd(t *testing.T, name string, args ...string) {
	t.Helper()
	argv := append(append(append([]string{}, pg.asUser...), name), args...)
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", argv, err, out)
	}
}

// postgresBinDir finds the directory of initdb and pg_ctl.
func postgresBinDir(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if _, err := os.Stat(filepath.Join(filepath.Dir(p), "initdb")); err == nil {
			return filepath.Dir(p)
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i]
		}
	}
	t.Fatal("no Postgres server binaries (initdb, pg_ctl) on PATH or under /usr/lib/postgresql/*/bin: scenario 8 runs a cluster of its own")
	return ""
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
