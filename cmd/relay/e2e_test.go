package main

// End-to-end tests: the built binary against the test Postgres and a kfake
// broker, driven as an operator would, with environment variables and
// signals.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/internal/relaytest"
)

// proc is a relay child process whose output the test can wait on.
type proc struct {
	t   *testing.T
	cmd *exec.Cmd

	mu      sync.Mutex
	stdout  []string
	stderr  []string
	changed chan struct{} // closed and replaced on every new line and at exit
	exited  chan struct{}
}

// lineWriter splits a stream into lines for proc.
type lineWriter struct {
	p    *proc
	dst  *[]string
	part []byte
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	w.part = append(w.part, b...)
	for {
		i := bytes.IndexByte(w.part, '\n')
		if i < 0 {
			break
		}
		*w.dst = append(*w.dst, string(w.part[:i]))
		w.part = w.part[i+1:]
	}
	close(w.p.changed)
	w.p.changed = make(chan struct{})
	return len(b), nil
}

// startRelay starts the binary with args and an environment of exactly the
// RELAY_* variables given (any inherited RELAY_* variable is dropped). The
// process is killed when the test ends, if it still runs.
func startRelay(t *testing.T, vars map[string]string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, changed: make(chan struct{}), exited: make(chan struct{})}
	p.cmd = relaytest.RelayCommand(t, vars, args...)
	p.cmd.Stdout = &lineWriter{p: p, dst: &p.stdout}
	p.cmd.Stderr = &lineWriter{p: p, dst: &p.stderr}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start relay: %v", err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.mu.Lock()
		close(p.exited)
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if strings.Contains(p.output("stderr"), "WARNING: DATA RACE") {
			t.Errorf("the relay process reported a data race")
		}
		if t.Failed() {
			p.mu.Lock()
			defer p.mu.Unlock()
			t.Logf("relay %v (pid %d) stdout:\n%s", args, p.cmd.Process.Pid, tail(p.stdout, 40))
			t.Logf("relay %v (pid %d) stderr:\n%s", args, p.cmd.Process.Pid, tail(p.stderr, 60))
		}
	})
	return p
}

func tail(lines []string, n int) string {
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitLine waits until a line of the stream (stdout or stderr) satisfies
// match, and returns it.
func (p *proc) waitLine(timeout time.Duration, stream, what string, match func(string) bool) string {
	p.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		p.mu.Lock()
		lines := p.stderr
		if stream == "stdout" {
			lines = p.stdout
		}
		lines = lines[seen:]
		seen += len(lines)
		changed := p.changed
		p.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l
			}
		}
		select {
		case <-changed:
		case <-p.exited:
			// One more pass picks up lines written just before exit.
			p.mu.Lock()
			var rest []string
			if stream == "stdout" {
				rest = p.stdout[seen:]
			} else {
				rest = p.stderr[seen:]
			}
			p.mu.Unlock()
			for _, l := range rest {
				if match(l) {
					return l
				}
			}
			p.t.Fatalf("relay exited (%v) before %s", p.cmd.ProcessState, what)
		case <-deadline.C:
			p.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

// waitLog waits for the JSON log line with the given message and returns
// its fields.
func (p *proc) waitLog(timeout time.Duration, msg string) map[string]any {
	p.t.Helper()
	var fields map[string]any
	p.waitLine(timeout, "stderr", "log message "+msg, func(l string) bool {
		fields = nil
		return json.Unmarshal([]byte(l), &fields) == nil && fields["msg"] == msg
	})
	return fields
}

func (p *proc) output(stream string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if stream == "stdout" {
		return strings.Join(p.stdout, "\n")
	}
	return strings.Join(p.stderr, "\n")
}

func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// waitExit waits for the process to end and returns its exit code (-1 when
// a signal killed it).
func (p *proc) waitExit(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		p.t.Fatalf("relay still running %v later", timeout)
		return 0
	}
}

// relayEnv is the environment of a relay for one test's schema.
func relayEnv(db *relaytest.DB, brokers []string, extra ...string) map[string]string {
	env := map[string]string{
		"RELAY_DATABASE_URL":  db.URL,
		"RELAY_SCHEMA":        db.Schema,
		"RELAY_KAFKA_BROKERS": strings.Join(brokers, ","),
		"RELAY_HTTP_ADDR":     "127.0.0.1:0",
		"RELAY_LOG_LEVEL":     "info",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

// sentRow is an outbox row as inserted, with its id.
type sentRow struct {
	id  int64
	msg relaytest.Message
}

// insertConcurrently inserts total rows from workers goroutines, each in
// transactions of txSize rows, as concurrent application transactions
// would. gen makes row i of a worker. Rows of one key must come from one
// worker: only then is id order the commit order of the key's rows, which is
// the order the relay promises (README.md, Guarantees: per-key order).
func insertConcurrently(t *testing.T, pool *pgxpool.Pool, workers, total, txSize int, gen func(worker, i int) relaytest.Message) map[int64]relaytest.Message {
	t.Helper()
	results := make([][]sentRow, workers)
	var g errgroup.Group
	for w := range workers {
		g.Go(func() error {
			n := total / workers
			if w < total%workers {
				n++
			}
			for start := 0; start < n; start += txSize {
				msgs := make([]relaytest.Message, 0, txSize)
				for i := start; i < min(n, start+txSize); i++ {
					msgs = append(msgs, gen(w, i))
				}
				ids, err := insertTx(pool, msgs)
				if err != nil {
					return err
				}
				for i, id := range ids {
					results[w] = append(results[w], sentRow{id, msgs[i]})
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("insert: %v", err)
	}
	rows := map[int64]relaytest.Message{}
	for _, rs := range results {
		for _, r := range rs {
			rows[r.id] = r.msg
		}
	}
	if len(rows) != total {
		t.Fatalf("inserted %d rows, want %d", len(rows), total)
	}
	return rows
}

// insertTx inserts msgs in one transaction, in one round trip.
func insertTx(pool *pgxpool.Pool, msgs []relaytest.Message) ([]int64, error) {
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var b pgx.Batch
	ids := make([]int64, len(msgs))
	for i, m := range msgs {
		b.Queue(`INSERT INTO messages (topic, key, payload, headers) VALUES ($1, $2, $3, $4) RETURNING id`,
			m.Topic, m.Key, m.Payload, m.Headers).QueryRow(func(r pgx.Row) error { return r.Scan(&ids[i]) })
	}
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return nil, err
	}
	return ids, tx.Commit(ctx)
}

// loadRows reads every row of the outbox, for tests that insert with SQL.
func loadRows(t *testing.T, pool *pgxpool.Pool) map[int64]relaytest.Message {
	t.Helper()
	rs, err := pool.Query(context.Background(), `SELECT id, topic, key, payload, headers FROM messages`)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[int64]relaytest.Message{}
	for rs.Next() {
		var id int64
		var m relaytest.Message
		if err := rs.Scan(&id, &m.Topic, &m.Key, &m.Payload, &m.Headers); err != nil {
			t.Fatal(err)
		}
		rows[id] = m
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}

// consumeIDs reads topics from the start until every id of rows has arrived
// at least once, and returns everything it read.
func consumeIDs(t *testing.T, brokers []string, rows map[int64]relaytest.Message, timeout time.Duration, topics ...string) []*kgo.Record {
	t.Helper()
	seen := map[int64]bool{}
	read := 0
	return relaytest.ConsumeUntil(t, brokers, timeout, fmt.Sprintf("every one of %d rows", len(rows)), func(recs []*kgo.Record) bool {
		for _, r := range recs[read:] {
			if id, err := relaytest.OutboxID(r); err == nil {
				seen[id] = true
			}
		}
		read = len(recs)
		return len(seen) >= len(rows)
	}, topics...)
}

// checkDelivery checks the records against the rows with the checker the
// fault suite uses too (relaytest.CheckRecords: every record is a row,
// intact, and each key's first deliveries are in id order), and that every
// row arrived. With exactlyOnce, a row may not arrive twice. It returns how
// many duplicates it saw.
func checkDelivery(t *testing.T, rows map[int64]relaytest.Message, recs []*kgo.Record, exactlyOnce bool) int {
	t.Helper()
	problems := relaytest.NewProblems(t, 10)
	d := relaytest.CheckRecords(problems, rows, recs)
	for id := range rows {
		switch n := d.Deliveries[id]; {
		case n == 0:
			problems.Errorf("row %d never arrived", id)
		case n > 1 && exactlyOnce:
			problems.Errorf("row %d arrived %d times", id, n)
		}
	}
	problems.Done()
	return d.Duplicates
}

// waitSent waits until n rows of the outbox are marked sent.
func waitSent(t *testing.T, db *relaytest.DB, n int, timeout time.Duration) {
	t.Helper()
	relaytest.WaitFor(t, timeout, fmt.Sprintf("%d rows marked sent", n), func() bool { return db.Count(t, "sent") >= n })
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

// checkHealthy checks that /livez and /readyz answer 200.
func checkHealthy(t *testing.T, httpAddr string) {
	t.Helper()
	for _, path := range []string{"/livez", "/readyz"} {
		if code, body := httpGet(t, "http://"+httpAddr+path); code != http.StatusOK || body != "ok\n" {
			t.Errorf("GET %s: %d %q, want 200 \"ok\\n\"", path, code, body)
		}
	}
}

// stopRelay sends SIGTERM and requires exit 0 within within.
func stopRelay(t *testing.T, p *proc, within time.Duration) {
	t.Helper()
	start := time.Now()
	p.signal(syscall.SIGTERM)
	if code := p.waitExit(within); code != 0 {
		t.Fatalf("relay exited %d after SIGTERM, want 0", code)
	}
	stopping := p.waitLog(0, "relay_stopping")["time"]
	stopped := p.waitLog(0, "relay_stopped")["time"]
	t.Logf("relay exited 0 %v after SIGTERM (logged relay_stopping at %v, relay_stopped at %v)", time.Since(start).Round(time.Millisecond), stopping, stopped)
}

// Ten thousand rows, written by eight concurrent writers while the relay
// runs, arrive exactly once, intact and in per-key order; SIGTERM then stops
// the relay with exit 0 within RELAY_SHUTDOWN_TIMEOUT.
func TestRunDeliversConcurrentInserts(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	topics := []string{"orders", "payments", "users"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()
	p := startRelay(t, relayEnv(db, brokers, "RELAY_SHUTDOWN_TIMEOUT", "5s"), "run")
	start := p.waitLog(30*time.Second, "relay_starting")
	if start["schema"] != db.Schema || start["mode"] != "run" {
		t.Errorf("relay_starting log: %v", start)
	}
	httpAddr := p.waitLog(30*time.Second, "http_listening")["addr"].(string)
	checkHealthy(t, httpAddr)

	const total = 10000
	rows := insertConcurrently(t, db.Pool, 8, total, 50, func(w, i int) relaytest.Message {
		m := relaytest.Message{
			Topic:   topics[i%3],
			Key:     fmt.Appendf(nil, "w%d-key-%d", w, i%40),
			Payload: fmt.Appendf(nil, `{"writer":%d,"n":%d}`, w, i),
			Headers: map[string]string{"type": "created", "n": strconv.Itoa(i)},
		}
		switch i % 97 {
		case 5:
			m.Key = nil // no order promise, but must arrive
		case 7:
			m.Payload = nil // tombstone
		case 11:
			m.Headers = map[string]string{}
		}
		return m
	})

	recs := relaytest.Consume(t, brokers, total, 90*time.Second, topics...)
	checkDelivery(t, rows, recs, true)
	waitSent(t, db, total, 30*time.Second)
	if n := relaytest.RecordsInTopics(t, brokers, topics...); n != total {
		t.Errorf("Kafka holds %d records, want exactly %d", n, total)
	}
	checkHealthy(t, httpAddr)
	checkMetrics(t, httpAddr, total)
	stopRelay(t, p, 5*time.Second+3*time.Second)
}

// checkMetrics reads /metrics and checks that the relay counted sent rows
// delivered in all and that the Kafka client's and the pool's metrics are
// there.
func checkMetrics(t *testing.T, httpAddr string, sent int) {
	t.Helper()
	code, body := httpGet(t, "http://"+httpAddr+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d", code)
	}
	var counted float64
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, "outbox_relay_rows_sent_total{") {
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			counted += v
		}
	}
	if counted != float64(sent) {
		t.Errorf("outbox_relay_rows_sent_total sums to %v, want %d", counted, sent)
	}
	for _, name := range []string{"outbox_relay_kafka_", "outbox_relay_db_pool_connections ", "outbox_relay_delivery_latency_seconds_bucket", "outbox_relay_pending_rows ", "outbox_relay_ready 1", "outbox_relay_build_info{"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics has no %s", strings.TrimSpace(name))
		}
	}
}

// Two relays on one schema share the work without losing a row or letting a
// row overtake an earlier row of its key.
func TestRunTwoRelaysKeepPerKeyOrder(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	topics := []string{"events"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()
	env := relayEnv(db, brokers, "RELAY_SHUTDOWN_TIMEOUT", "5s", "RELAY_BATCH_SIZE", "20")
	a := startRelay(t, env, "run")
	b := startRelay(t, env, "run")
	a.waitLog(30*time.Second, "http_listening")
	b.waitLog(30*time.Second, "http_listening")

	const total, keys, writers = 5000, 50, 5
	rows := insertConcurrently(t, db.Pool, writers, total, 10, func(w, i int) relaytest.Message {
		return relaytest.Message{
			Topic:   "events",
			Key:     fmt.Appendf(nil, "key-%d", w*(keys/writers)+i%(keys/writers)),
			Payload: fmt.Appendf(nil, "w%d-%d", w, i),
			Headers: map[string]string{"seq": strconv.Itoa(i)},
		}
	})
	recs := consumeIDs(t, brokers, rows, 90*time.Second, topics...)
	dups := checkDelivery(t, rows, recs, false)
	waitSent(t, db, total, 30*time.Second)
	t.Logf("%d records for %d rows (%d duplicates)", len(recs), total, dups)
	stopRelay(t, a, 8*time.Second)
	stopRelay(t, b, 8*time.Second)
}

// kill -9 in the middle of the work loses nothing: a new relay delivers what
// the killed one had not marked sent, and the duplicates this causes are
// exact copies, with the same outbox-id.
//
// The kill lands at the worst moment, deterministically: Kafka has
// acknowledged a whole batch but the relay has not yet committed it as sent.
// A SHARE lock on messages, taken by the test, lets the relay claim rows
// (FOR UPDATE only needs ROW SHARE) and produce them, but makes its
// mark-sent UPDATE (ROW EXCLUSIVE) wait.
func TestRunSurvivesKill9(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := relaytest.NewDB(t)
	topics := []string{"t0", "t1", "t2"}
	cluster := relaytest.NewCluster(t, 3, topics...)
	brokers := cluster.ListenAddrs()

	const total = 20000
	_, err := db.Pool.Exec(ctx, `
		INSERT INTO messages (topic, key, payload, headers)
		SELECT 't' || (i % 3), convert_to('key-' || (i % 300), 'UTF8'), convert_to('payload-' || i, 'UTF8'),
		       jsonb_build_object('n', i::text)
		FROM generate_series(1, $1) AS i`, total)
	if err != nil {
		t.Fatal(err)
	}
	rows := loadRows(t, db.Pool)

	env := relayEnv(db, brokers, "RELAY_BATCH_SIZE", "200")
	first := startRelay(t, env, "run")
	relaytest.WaitFor(t, 60*time.Second, "some rows sent", func() bool { return db.Count(t, "sent") > 0 })

	lock, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Rollback(ctx) }()
	if _, err := lock.Exec(ctx, `LOCK TABLE messages IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	relaytest.WaitFor(t, 60*time.Second, "a batch acknowledged by Kafka, waiting to be marked sent", func() bool {
		var waiting int
		err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'messages'::regclass`).Scan(&waiting)
		if err != nil {
			t.Fatal(err)
		}
		return waiting > 0
	})
	sentAtKill := db.Count(t, "sent")
	inKafka := relaytest.RecordsInTopics(t, brokers, topics...)
	// The killed relay's sessions: every other one with a lock on the
	// outbox (its claims' row locks, its write-backs waiting for ours).
	var orphans []int32
	if err := db.Pool.QueryRow(ctx, `
SELECT COALESCE(array_agg(DISTINCT pid), '{}') FROM pg_locks
WHERE relation = 'messages'::regclass AND pid <> $1`, lock.Conn().PgConn().PID()).Scan(&orphans); err != nil {
		t.Fatal(err)
	}
	first.signal(syscall.SIGKILL)
	if code := first.waitExit(10 * time.Second); code != -1 {
		t.Fatalf("exit code %d after SIGKILL", code)
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	inFlight := inKafka - int64(sentAtKill)
	if sentAtKill >= total || inFlight <= 0 {
		t.Fatalf("killed with %d of %d rows sent and %d records in Kafka: no batch was in flight", sentAtKill, total, inKafka)
	}
	// A write-back sends its COMMIT with it: one that reached Postgres
	// before the kill still commits once our lock is gone, and its rows,
	// acknowledged by Kafka, are rightly sent. Every other row of the
	// batches in flight must be produced again.
	relaytest.WaitFor(t, 30*time.Second, "the killed relay's sessions to end", func() bool {
		var left int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)`, orphans).Scan(&left); err != nil {
			t.Fatal(err)
		}
		return left == 0
	})
	markedAfterKill := int64(db.Count(t, "sent") - sentAtKill)
	t.Logf("killed with %d of %d rows sent and %d rows acknowledged but not marked; %d of them marked by a write-back sent before the kill",
		sentAtKill, total, inFlight, markedAfterKill)

	second := startRelay(t, env, "run")
	waitSent(t, db, total, 90*time.Second)
	recs := consumeIDs(t, brokers, rows, 60*time.Second, topics...)
	dups := checkDelivery(t, rows, recs, false)
	t.Logf("%d records for %d rows (%d duplicates)", len(recs), total, dups)
	if want := inFlight - markedAfterKill; int64(dups) < want {
		t.Errorf("%d duplicates, want at least the %d acknowledged rows the killed relay never marked", dups, want)
	}
	stopRelay(t, second, 8*time.Second)
}

// relay dev starts its own broker on the address asked for, says so loudly,
// and delivers rows inserted with plain SQL, including the banner's example.
func TestDev(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	env := relayEnv(db, nil)
	delete(env, "RELAY_KAFKA_BROKERS")
	p := startRelay(t, env, "dev", "--kafka-addr", "127.0.0.1:0")

	line := p.waitLine(30*time.Second, "stdout", "the broker address in the banner", func(l string) bool {
		return strings.Contains(l, "Kafka broker:")
	})
	addr := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "Kafka broker:"))
	if portOf(addr) == "" || portOf(addr) == "0" {
		t.Fatalf("banner names broker %q, want the actual address", addr)
	}
	p.waitLine(30*time.Second, "stdout", "the end of the banner", func(l string) bool { return strings.HasPrefix(l, " Stop with") })
	banner := p.output("stdout")
	for _, want := range []string{
		"KEEPS NOTHING ACROSS RESTARTS",
		"kcat -b " + addr + " -C -t <topic>",
		"INSERT INTO " + db.Schema + ".messages",
	} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner lacks %q:\n%s", want, banner)
		}
	}
	httpAddr := p.waitLog(30*time.Second, "http_listening")["addr"].(string)
	checkHealthy(t, httpAddr)

	// The example INSERT of the banner works as printed, with psql's
	// search_path (not the schema's).
	_, sql, _ := strings.Cut(banner, "Insert a row")
	_, sql, _ = strings.Cut(sql, "\n")
	sql, _, _ = strings.Cut(sql, ";")
	conn, err := pgx.Connect(context.Background(), db.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("banner's INSERT %q: %v", sql, err)
	}
	_, err = conn.Exec(context.Background(), fmt.Sprintf(`
		INSERT INTO %s.messages (topic, key, payload, headers)
		SELECT CASE WHEN i %% 2 = 0 THEN 'orders' ELSE 'invoices' END,
		       convert_to('k' || (i %% 7), 'UTF8'), convert_to('v' || i, 'UTF8'), '{"src":"sql"}'
		FROM generate_series(1, 200) AS i`, db.Schema))
	if err != nil {
		t.Fatal(err)
	}
	rows := loadRows(t, db.Pool)
	waitSent(t, db, len(rows), 30*time.Second)
	recs := consumeIDs(t, []string{addr}, rows, 30*time.Second, "orders", "invoices")
	checkDelivery(t, rows, recs, true)
	for _, r := range recs {
		if r.Partition < 0 || r.Partition > 2 {
			t.Fatalf("record in partition %d; dev topics have 3", r.Partition)
		}
	}
	stopRelay(t, p, 10*time.Second)
}

// startStuckRelay starts a relay whose Kafka is unreachable and returns once
// it has claimed the one row of its outbox: the batch is in flight, waiting
// for Kafka, and holds the row's lock. It also checks the health endpoints:
// /livez answers 200 and /readyz 503 naming Kafka.
func startStuckRelay(t *testing.T, shutdownTimeout string) (*relaytest.DB, *proc) {
	t.Helper()
	db := relaytest.NewDB(t)
	db.Insert(t, relaytest.Message{Topic: "orders", Key: []byte("k"), Payload: []byte("v")})
	env := relayEnv(db, []string{closedPort(t)}, "RELAY_SHUTDOWN_TIMEOUT", shutdownTimeout)
	p := startRelay(t, env, "run")
	httpAddr := p.waitLog(30*time.Second, "http_listening")["addr"].(string)

	if code, body := httpGet(t, "http://"+httpAddr+"/livez"); code != http.StatusOK {
		t.Errorf("GET /livez with Kafka down: %d %q, want 200", code, body)
	}
	code, body := httpGet(t, "http://"+httpAddr+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "kafka: ") || strings.Contains(body, "database") {
		t.Errorf("GET /readyz with Kafka down: %d %q, want 503 naming kafka only", code, body)
	}

	relaytest.WaitFor(t, 30*time.Second, "the relay to lock the row", func() bool {
		ctx := context.Background()
		tx, err := db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		var free int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM (SELECT id FROM messages FOR UPDATE SKIP LOCKED) s`).Scan(&free); err != nil {
			t.Fatal(err)
		}
		return free == 0
	})
	return db, p
}

// checkStillPending checks that the row of startStuckRelay is pending and
// has spent no attempt: a release at shutdown is not a failure.
func checkStillPending(t *testing.T, db *relaytest.DB) {
	t.Helper()
	var status string
	var attempts int
	if err := db.Pool.QueryRow(context.Background(), `SELECT status, attempts FROM messages`).Scan(&status, &attempts); err != nil {
		t.Fatal(err)
	}
	if status != "pending" || attempts != 0 {
		t.Errorf("row is %s after %d attempts, want pending after 0", status, attempts)
	}
}

// A batch Kafka never answers is released after RELAY_SHUTDOWN_TIMEOUT, and
// the relay still exits 0.
func TestShutdownTimeoutReleasesBatch(t *testing.T) {
	t.Parallel()
	db, p := startStuckRelay(t, "2s")
	stopRelay(t, p, 2*time.Second+5*time.Second)
	checkStillPending(t, db)
}

// A second SIGTERM ends the relay at once with exit 1, without waiting for
// the batch in flight.
func TestSecondSignalExitsAtOnce(t *testing.T) {
	t.Parallel()
	db, p := startStuckRelay(t, "2m")
	p.signal(syscall.SIGTERM)
	p.waitLog(10*time.Second, "relay_stopping")
	p.signal(syscall.SIGTERM)
	if code := p.waitExit(10 * time.Second); code != 1 {
		t.Fatalf("exit code %d after a second SIGTERM, want 1", code)
	}
	if !strings.Contains(p.output("stderr"), "second signal") {
		t.Errorf("stderr does not say why it exited")
	}
	checkStillPending(t, db)
}
