package main

// Tests of the operator's rough edges: what the CLI says and refuses, run
// in-process through run() against the test Postgres.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/migrations"
)

func TestMigrateDownRefusesWhileRowsAreUndelivered(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	env := map[string]string{"RELAY_DATABASE_URL": db.URL, "RELAY_SCHEMA": db.Schema}
	db.Insert(t, relaytest.Message{Topic: "orders", Payload: []byte("p")})

	// The newest migration adds the delivery options: rolling it back
	// names the columns it drops.
	stdout, _, err := runCLI(t, env, "migrate", "down")
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "1 pending and 0 stuck row(s)") || !strings.Contains(err.Error(), "--yes") {
		t.Fatalf("migrate down with a pending row: %v (exit %d); want a refusal naming the rows and --yes", err, exitCode(err))
	}
	if !strings.Contains(stdout, "column messages.deliver_after") || !strings.Contains(stdout, "column stuck_messages.expires_at") {
		t.Errorf("migrate down does not say what it drops:\n%s", stdout)
	}
	if stdout, _, err = runCLI(t, env, "migrate", "down", "--yes"); err != nil || !strings.Contains(stdout, "rolled back migration 5") {
		t.Fatalf("migrate down --yes: %v\n%s", err, stdout)
	}
	// The migrations between the outbox and the delivery options, the
	// audit log among them; 00002 drops the uuid column, and says so.
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	between := files[1 : len(files)-1]
	for i := len(between) - 1; i >= 0; i-- { // newest first, as they roll back
		f := between[i]
		stdout, _, err = runCLI(t, env, "migrate", "down", "--yes")
		if err != nil || !strings.Contains(stdout, "rolled back migration") || !strings.Contains(stdout, f) {
			t.Fatalf("migrate down --yes of %s: %v\n%s", f, err, stdout)
		}
		if strings.HasPrefix(f, "00004") && !strings.Contains(stdout, "drops: table audit_log") {
			t.Errorf("migrate down of %s does not say it drops audit_log:\n%s", f, stdout)
		}
		if strings.HasPrefix(f, "00002") && !strings.Contains(stdout, "column messages.uuid") {
			t.Errorf("migrate down of %s does not say it drops messages.uuid:\n%s", f, stdout)
		}
	}
	// Next is the outbox itself: it drops the tables with the row.
	stdout, _, err = runCLI(t, env, "migrate", "down")
	if exitCode(err) != 2 {
		t.Fatalf("migrate down of the outbox tables with a pending row: %v (exit %d), want a refusal", err, exitCode(err))
	}
	for _, want := range []string{"00001_outbox.sql", "table messages", "table stuck_messages", "table discarded_messages"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("migrate down does not name %q:\n%s", want, stdout)
		}
	}
	if got := db.Count(t, "pending"); got != 1 {
		t.Fatalf("%d pending rows after a refused migrate down, want 1", got)
	}
	if _, _, err := runCLI(t, env, "migrate", "down", "--yes"); err != nil {
		t.Fatalf("migrate down --yes: %v", err)
	}
	var exists bool
	if err := db.Pool.QueryRow(context.Background(), `SELECT to_regclass('messages') IS NOT NULL`).Scan(&exists); err != nil || exists {
		t.Errorf("messages still exists after migrate down --yes (%v)", err)
	}
}

func TestMigrateStatusCreatesNothing(t *testing.T) {
	t.Parallel()
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "test_absent_" + hex.EncodeToString(b[:])
	env := map[string]string{"RELAY_DATABASE_URL": relaytest.DatabaseURL(), "RELAY_SCHEMA": schema}
	t.Cleanup(func() { dropSchema(t, schema) })

	stdout, stderr, err := runCLI(t, env, "migrate", "status")
	if err != nil {
		t.Fatalf("migrate status: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) < 3 || !strings.Contains(lines[1], "pending") || !strings.Contains(stdout, "00001_outbox.sql") {
		t.Errorf("migrate status on a missing schema:\n%s\nwant every migration pending", stdout)
	}
	if !strings.Contains(stderr, "schema "+schema+" does not exist") || !strings.Contains(stderr, "relay migrate up") {
		t.Errorf("migrate status stderr %q: want the hint", stderr)
	}
	conn, err := pgx.Connect(context.Background(), relaytest.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_namespace WHERE nspname = $1`, schema).Scan(&n); err != nil || n != 0 {
		t.Errorf("migrate status created schema %s (%v)", schema, err)
	}
}

func dropSchema(t *testing.T, schema string) {
	conn, err := pgx.Connect(context.Background(), relaytest.DatabaseURL())
	if err != nil {
		t.Errorf("drop schema: %v", err)
		return
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		t.Errorf("drop schema: %v", err)
	}
}

func TestUnknownVariablesAreWarnedAbout(t *testing.T) {
	t.Parallel()
	_, env := stuckEnv(t)
	env["RELAY_KAFKA_BROKER"] = "kafka:9092"
	env["RELAY_BATCHSIZE"] = "10"
	env["RELAY_COMPLETELY_DIFFERENT"] = "x"
	env["RELAY_TEST_DATABASE_URL"] = "ours" // the test suite's, not a misspelling
	_, stderr, err := runCLI(t, env, "stuck", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"RELAY_KAFKA_BROKER is not a relay variable and is ignored; did you mean RELAY_KAFKA_BROKERS?",
		"RELAY_BATCHSIZE is not a relay variable and is ignored; did you mean RELAY_BATCH_SIZE?",
		"RELAY_COMPLETELY_DIFFERENT is not a relay variable and is ignored (",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "RELAY_TEST_DATABASE_URL") {
		t.Errorf("warned about the test suite's variable:\n%s", stderr)
	}
}

func TestStuckListSaysWhenItIsCutOff(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	env := map[string]string{"RELAY_DATABASE_URL": db.URL, "RELAY_SCHEMA": db.Schema}
	if _, err := db.Pool.Exec(context.Background(), `
		INSERT INTO stuck_messages (id, topic, key, payload, created_at, attempts, last_error, error_kind)
		SELECT g, 'orders', NULL, 'p', now(), 10, 'NOT_ENOUGH_REPLICAS', 'row_retriable' FROM generate_series(1, 107) g`); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, err := runCLI(t, env, "stuck", "list")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(stdout, "\n"); n != 101 {
		t.Errorf("stuck list printed %d lines, want a header and 100 rows", n)
	}
	if want := "showing the first 100 of 107 stuck rows (by id); see the rest with --limit 107, or --limit 0 for all"; !strings.Contains(stderr, want) {
		t.Errorf("stuck list of 107 rows: stderr %q lacks %q", stderr, want)
	}
	stdout, stderr, err = runCLI(t, env, "stuck", "list", "--limit", "0")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(stdout, "\n"); n != 108 || strings.Contains(stderr, "showing") {
		t.Errorf("stuck list --limit 0: %d lines, stderr %q; want all 107 rows and no note", n, stderr)
	}
	// Exactly at the limit is not cut off.
	if _, stderr, _ = runCLI(t, env, "stuck", "list", "--limit", "107"); strings.Contains(stderr, "showing") {
		t.Errorf("stuck list --limit 107 says it is cut off: %q", stderr)
	}
	if _, stderr, _ = runCLI(t, env, "stuck", "list", "--json"); !strings.Contains(stderr, "first 100 of 107") {
		t.Errorf("stuck list --json: stderr %q does not say it is cut off", stderr)
	}
}

func TestMissingSchemaGetsAHint(t *testing.T) {
	t.Parallel()
	env := map[string]string{"RELAY_DATABASE_URL": relaytest.DatabaseURL(), "RELAY_SCHEMA": "outbxo_misspelled"}
	for _, args := range [][]string{{"stuck", "list"}, {"stuck", "show", "1"}, {"stuck", "requeue", "--all", "--yes"}, {"resend", "--ids", "1", "--yes"}} {
		_, _, err := runCLI(t, env, args...)
		if exitCode(err) != 2 {
			t.Errorf("relay %v on a missing schema: %v (exit %d), want exit 2", args, err, exitCode(err))
			continue
		}
		for _, want := range []string{"schema outbxo_misspelled has no outbox tables", "RELAY_SCHEMA", "relay migrate up"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("relay %v: %q lacks %q", args, err, want)
			}
		}
		if strings.Contains(err.Error(), "SQLSTATE") {
			t.Errorf("relay %v: raw database error %q", args, err)
		}
	}
}

func TestNoSuchRowHasOneExitCode(t *testing.T) {
	t.Parallel()
	db, env := stuckEnv(t)
	for _, args := range [][]string{{"show", "999"}, {"requeue", "999"}, {"discard", "999", "--yes"}, {"requeue", "10", "999"}, {"discard", "20", "999", "--yes"}} {
		_, _, err := runCLI(t, env, append([]string{"stuck"}, args...)...)
		if exitCode(err) != 2 || !strings.Contains(err.Error(), "no stuck row 999") {
			t.Errorf("relay stuck %v: %v (exit %d); want exit 2, no stuck row 999", args, err, exitCode(err))
		}
	}
	var n int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM stuck_messages WHERE id IN (10, 20)`).Scan(&n); err != nil || n != 2 {
		t.Errorf("%d of rows 10 and 20 still stuck, want both: a command with a missing id does nothing", n)
	}
}

func TestRequeueWarnsAboutRowsThatFailedForGood(t *testing.T) {
	t.Parallel()
	_, env := stuckEnv(t)
	_, stderr, err := runCLI(t, env, "stuck", "requeue", "20") // row_retriable
	if err != nil || stderr != "" {
		t.Fatalf("requeue of a retriable row: %v, stderr %q; want no warning", err, stderr)
	}
	stdout, stderr, err := runCLI(t, env, "stuck", "requeue", "10") // row_fatal MESSAGE_TOO_LARGE
	if err != nil || !strings.Contains(stdout, "requeued 1 row(s): 10") {
		t.Fatalf("requeue 10: %v %q", err, stdout)
	}
	for _, want := range []string{"row_fatal", "row 10: MESSAGE_TOO_LARGE", "fail again", "max.message.bytes"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("requeue of a row_fatal row: stderr lacks %q:\n%s", want, stderr)
		}
	}
}

func TestStuckBulkActionsByFilter(t *testing.T) {
	t.Parallel()
	db, env := stuckEnv(t)
	ctx := context.Background()

	// stdin is not a terminal here: a bulk action wants --yes.
	_, _, err := runCLI(t, env, "stuck", "requeue", "--topic", "a")
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "requeue 1 stuck row(s) (a: 1); add --yes") {
		t.Fatalf("requeue --topic a without --yes: %v (exit %d)", err, exitCode(err))
	}
	if _, _, err := runCLI(t, env, "stuck", "requeue", "--topic", "a", "10"); exitCode(err) != 2 {
		t.Errorf("requeue with ids and a filter: exit %d, want 2", exitCode(err))
	}
	stdout, _, err := runCLI(t, env, "stuck", "requeue", "--topic", "a", "--yes", "--operator", "bob")
	if err != nil || !strings.Contains(stdout, "requeued 1 row(s): 10") {
		t.Fatalf("requeue --topic a --yes: %v %q", err, stdout)
	}
	stdout, _, err = runCLI(t, env, "stuck", "discard", "--error-kind", "row_fatal", "--yes")
	if err != nil || !strings.Contains(stdout, "no stuck rows match") {
		t.Fatalf("discard of no match: %v %q", err, stdout)
	}
	stdout, _, err = runCLI(t, env, "stuck", "discard", "--error-kind", "row_retriable", "--yes", "--reason", "obsolete")
	if err != nil || !strings.Contains(stdout, "discarded 1 row(s): 20") {
		t.Fatalf("discard --error-kind row_retriable --yes: %v %q", err, stdout)
	}
	type entry struct{ operator, action, detail string }
	var got []entry
	rows, err := db.Pool.Query(ctx, `SELECT operator, action, coalesce(detail, '') FROM audit_log WHERE source = 'cli' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var e entry
	if _, err := pgx.ForEachRow(rows, []any{&e.operator, &e.action, &e.detail}, func() error { got = append(got, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !strings.Contains(got[0].operator, "(bob)") || got[0].action != "requeue" || got[0].detail != `--topic "a"` ||
		!strings.Contains(got[1].operator, "(alice)") || got[1].action != "discard" || got[1].detail != `--error-kind "row_retriable"; reason: obsolete` {
		t.Errorf("audit_log = %+v; want the requeue by bob and the discard by alice with their filters", got)
	}
}

func TestHelpConfig(t *testing.T) {
	t.Parallel()
	stdout, _, err := runCLI(t, nil, "help", "config")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(stdout, "\n") {
		if strings.HasPrefix(line, "|") || len([]rune(line)) > 100 {
			t.Errorf("help config: line is markdown or wider than 100 columns: %q", line)
		}
	}
	if !strings.Contains(stdout, "\nRELAY_SHUTDOWN_TIMEOUT") || !strings.Contains(stdout, "30s\n    How long a stopping relay waits") {
		t.Errorf("help config lacks RELAY_SHUTDOWN_TIMEOUT with its default and description:\n%s", stdout)
	}
	md, _, err := runCLI(t, nil, "help", "config", "--markdown")
	if err != nil || md != configTable() {
		t.Errorf("help config --markdown (%v) is not the README table", err)
	}
	env := map[string]string{
		"RELAY_DATABASE_URL":        "postgres://relay:hunter2hunter2@db:5432/app",
		"RELAY_KAFKA_SASL_PASSWORD": "s3cr3t-sasl",
		"RELAY_ADMIN_TOKEN":         "tok-0123456789abcdef",
		"RELAY_ALERT_WEBHOOK_URL":   "https://hooks.example/T000/B000/XXXX",
		"RELAY_BATCH_SIZE":          "250",
	}
	stdout, _, err = runCLI(t, env, "help", "config", "--values")
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"hunter2", "s3cr3t", "tok-0123", "XXXX"} {
		if strings.Contains(stdout, secret) {
			t.Errorf("help config --values shows the secret %q:\n%s", secret, stdout)
		}
	}
	for _, want := range []string{"postgres://relay:*****@db:5432/app  (set)", "RELAY_BATCH_SIZE", "250  (set)", "RELAY_SCHEMA", "outbox\n"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("help config --values lacks %q:\n%s", want, stdout)
		}
	}
}

// syncBuffer is a bytes.Buffer the daemon's log and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// tcpProxy forwards connections from a fixed local address to target
// while it is up; down closes the listener and every connection.
type tcpProxy struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        []net.Conn
	wg           sync.WaitGroup
}

func (p *tcpProxy) up(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatalf("proxy listen on %s: %v", p.addr, err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", p.target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			p.wg.Go(func() { _, _ = io.Copy(u, c); _ = u.Close() })
			p.wg.Go(func() { _, _ = io.Copy(c, u); _ = c.Close() })
		}
	})
}

func (p *tcpProxy) down() {
	p.mu.Lock()
	if p.ln != nil {
		_ = p.ln.Close()
	}
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

// The relay started while its database is down waits for it, whatever
// RELAY_MIGRATE_ON_START says, and is not ready until it connects.
func TestRunWaitsForTheDatabase(t *testing.T) {
	t.Parallel()
	for _, migrate := range []string{"true", "false"} {
		t.Run("migrate_on_start="+migrate, func(t *testing.T) {
			t.Parallel()
			db := relaytest.NewDB(t)
			cluster := relaytest.NewCluster(t, 1, "orders")
			proxy := &tcpProxy{addr: closedPort(t), target: "127.0.0.1:5432"}
			t.Cleanup(proxy.down)
			httpAddr := closedPort(t)
			env := map[string]string{
				"RELAY_DATABASE_URL":     strings.Replace(db.URL, "127.0.0.1:5432", proxy.addr, 1),
				"RELAY_SCHEMA":           db.Schema,
				"RELAY_KAFKA_BROKERS":    cluster.ListenAddrs()[0],
				"RELAY_HTTP_ADDR":        httpAddr,
				"RELAY_MIGRATE_ON_START": migrate,
				"RELAY_KAFKA_BROKER":     "misspelled:9092",
			}
			if !strings.Contains(env["RELAY_DATABASE_URL"], proxy.addr) {
				t.Fatalf("test database URL %s does not go through 127.0.0.1:5432", db.URL)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var logs syncBuffer
			done := make(chan error, 1)
			go func() { done <- run(ctx, []string{"run"}, mapEnv(env), io.Discard, &logs) }()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("run: %v", err)
				}
				if t.Failed() {
					t.Logf("relay log:\n%s", logs.String())
				}
			})

			readyz := func() (int, string) {
				resp, err := http.Get("http://" + httpAddr + "/readyz")
				if err != nil {
					return 0, err.Error()
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}
			relaytest.WaitFor(t, 20*time.Second, "the relay to log database_unavailable", func() bool {
				return strings.Contains(logs.String(), `"msg":"database_unavailable"`)
			})
			select {
			case err := <-done:
				t.Fatalf("run returned while the database was down: %v", err)
			default:
			}
			if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the database") {
				t.Errorf("/readyz while the database is down: %d %q; want 503 saying it waits for the database", code, body)
			}
			if !strings.Contains(logs.String(), `"msg":"unknown_variable","variable":"RELAY_KAFKA_BROKER","did_you_mean":"RELAY_KAFKA_BROKERS"`) {
				t.Errorf("the daemon did not log the misspelled variable")
			}

			proxy.up(t)
			relaytest.WaitFor(t, 30*time.Second, "/readyz to answer 200 once the database is reachable", func() bool {
				code, _ := readyz()
				return code == http.StatusOK
			})
			id := db.Insert(t, relaytest.Message{Topic: "orders", Key: []byte("k"), Payload: []byte("after the wait")})[0]
			recs := relaytest.Consume(t, cluster.ListenAddrs(), 1, 30*time.Second, "orders")
			if got, _ := relaytest.OutboxID(recs[0]); got != id {
				t.Errorf("delivered outbox-id %d, want %d", got, id)
			}
			if !strings.Contains(logs.String(), `"msg":"database_available"`) {
				t.Errorf("no database_available log line")
			}
		})
	}
}

// relay run serves the console on RELAY_CONSOLE_ADDR and never shows or
// logs the admin token.
func TestRunServesTheConsole(t *testing.T) {
	t.Parallel()
	db, env := stuckEnv(t)
	cluster := relaytest.NewCluster(t, 1, "a", "b")
	consoleAddr := closedPort(t)
	const token = "the-admin-token-0123456789"
	for k, v := range map[string]string{"RELAY_KAFKA_BROKERS": cluster.ListenAddrs()[0], "RELAY_HTTP_ADDR": "off",
		"RELAY_CONSOLE_ADDR": consoleAddr, "RELAY_ADMIN_TOKEN": token} {
		env[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	var logs syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"run"}, mapEnv(env), io.Discard, &logs) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + consoleAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	relaytest.WaitFor(t, 30*time.Second, "the console to answer", func() bool { code, _ := get("/"); return code == http.StatusOK })
	code, body := get("/stuck/10")
	if code != http.StatusOK || !strings.Contains(body, "MESSAGE_TOO_LARGE") || !strings.Contains(body, "Sign in") {
		t.Errorf("GET /stuck/10: %d\n%s", code, body)
	}
	resp, err := http.PostForm("http://"+consoleAddr+"/stuck/10/discard", map[string][]string{"confirm": {"yes"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("POST discard without a session: %d, want 403", resp.StatusCode)
	}
	var n int
	if err := db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM stuck_messages WHERE id = 10`).Scan(&n); err != nil || n != 1 {
		t.Errorf("row 10 gone after a refused discard (%v)", err)
	}
	if strings.Contains(body, token) || strings.Contains(logs.String(), token) {
		t.Errorf("the admin token was shown or logged")
	}
	if !strings.Contains(logs.String(), `"msg":"console_listening"`) {
		t.Errorf("no console_listening log line")
	}
}

func TestConsoleConfig(t *testing.T) {
	t.Parallel()
	_, err := loadConfig(mapEnv(map[string]string{"RELAY_CONSOLE_ADDR": "nowhere", "RELAY_ADMIN_TOKEN": "short-secret"}))
	if exitCode(err) != 2 || !strings.Contains(err.Error(), `RELAY_CONSOLE_ADDR: "nowhere": want host:port`) ||
		!strings.Contains(err.Error(), "RELAY_ADMIN_TOKEN: too short") || strings.Contains(err.Error(), "short-secret") {
		t.Errorf("bad console settings: %v", err)
	}
	if _, err := loadConfig(mapEnv(map[string]string{"RELAY_CONSOLE_ADDR": "127.0.0.1:8081", "RELAY_ADMIN_TOKEN": "0123456789abcdef"})); err != nil {
		t.Errorf("good console settings: %v", err)
	}
}
