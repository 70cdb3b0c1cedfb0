package main

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/retry"
)

// mapEnv is a getenv over a map, as tests give run its environment.
// It answers environKey with the map's names, as run asks to find unknown
// RELAY_* variables.
func mapEnv(m map[string]string) func(string) string {
	return func(k string) string {
		if k == environKey {
			return strings.Join(slices.Collect(maps.Keys(m)), "\n")
		}
		return m[k]
	}
}

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(mapEnv(nil))
	if err != nil {
		t.Fatalf("loadConfig with an empty environment: %v", err)
	}
	want := Config{
		DatabaseURL:          "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
		KafkaBrokers:         []string{"localhost:9092"},
		Schemas:              []string{"outbox"},
		HTTPAddr:             ":8080",
		MaxAttempts:          10,
		SentRetention:        24 * time.Hour,
		CheckTopicDurability: true,
		StuckBlocksKey:       true,
		ProduceTimeout:       30 * time.Second,
		OutageAlertAfter:     time.Minute,
		LagAlertAfter:        5 * time.Minute,
		AlertWindow:          time.Minute,
		ShutdownTimeout:      30 * time.Second,
		BatchSize:            1000,
		BatchMaxBytes:        16 << 20,
		InFlightBatches:      2,
		PollInterval:         500 * time.Millisecond,
		Wakeup:               true,
		RetryBase:            time.Second,
		RetryMax:             5 * time.Minute,
		MigrateOnStart:       true,
		LogFormat:            "json",
		LogLevel:             "info",
		ClientID:             "outbox-relay",
	}
	want.KafkaCompression = "snappy"
	// Debezium's outbox event router's defaults.
	want.DebeziumFieldEventID, want.DebeziumFieldEventKey, want.DebeziumFieldEventPayload = "id", "aggregateid", "payload"
	want.DebeziumRouteByField, want.DebeziumRouteTopicReplacement = "aggregatetype", "outbox.event.${routedByValue}"
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("defaults:\n got %+v\nwant %+v", cfg, want)
	}
	if cfg.DatabaseURL != defaultDatabaseURL {
		t.Errorf("default database URL %q differs from defaultDatabaseURL %q", cfg.DatabaseURL, defaultDatabaseURL)
	}
	wantRelay := relay.Config{
		Schema:           "outbox",
		BatchSize:        1000,
		BatchMaxBytes:    16 << 20,
		InFlightBatches:  2,
		PollInterval:     500 * time.Millisecond,
		Retry:            retry.Policy{Base: time.Second, Max: 5 * time.Minute},
		ProduceTimeout:   30 * time.Second,
		BatchTimeout:     time.Minute,
		ShutdownTimeout:  30 * time.Second,
		MaxAttempts:      10,
		OutageAlertAfter: time.Minute,
		LagAlertAfter:    5 * time.Minute,
		SentRetention:    24 * time.Hour,
		Durability:       relay.DurabilityWarn,
	}
	if got := cfg.relayConfig(); !reflect.DeepEqual(got, wantRelay) {
		t.Errorf("relay config:\n got %+v\nwant %+v", got, wantRelay)
	}
}

func TestConfigValues(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(mapEnv(map[string]string{
		"RELAY_DATABASE_URL":           "postgres://app@db:5432/app",
		"RELAY_KAFKA_BROKERS":          "k1:9092, k2:9093,[::1]:9094",
		"RELAY_SCHEMA":                 "events_outbox",
		"RELAY_HTTP_ADDR":              "off",
		"RELAY_MAX_ATTEMPTS":           "3",
		"RELAY_SHUTDOWN_TIMEOUT":       "5s",
		"RELAY_BATCH_SIZE":             "100000",
		"RELAY_BATCH_MAX_BYTES":        "1048576",
		"RELAY_POLL_INTERVAL":          "2s",
		"RELAY_CLAIM_LINGER":           "5ms",
		"RELAY_WAKEUP":                 "false",
		"RELAY_RETRY_BASE":             "100ms",
		"RELAY_RETRY_MAX":              "1m",
		"RELAY_MIGRATE_ON_START":       "false",
		"RELAY_LOG_FORMAT":             "text",
		"RELAY_LOG_LEVEL":              "DEBUG",
		"RELAY_CLIENT_ID":              "billing-relay",
		"RELAY_INSTANCE":               "relay-a",
		"RELAY_STUCK_BLOCKS_KEY":       "false",
		"RELAY_OUTAGE_ALERT_AFTER":     "30s",
		"RELAY_LAG_ALERT_AFTER":        "2m",
		"RELAY_SENT_RETENTION":         "0",
		"RELAY_REQUIRE_DURABLE_TOPICS": "true",
		"RELAY_IN_FLIGHT_BATCHES":      "4",
		"RELAY_PRODUCE_TIMEOUT":        "5s",
		"RELAY_UNKNOWN_IS_IGNORED":     "x",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.KafkaBrokers, []string{"k1:9092", "k2:9093", "[::1]:9094"}) {
		t.Errorf("brokers %q", cfg.KafkaBrokers)
	}
	want := relay.Config{
		Schema:                "events_outbox",
		BatchSize:             100000,
		BatchMaxBytes:         1 << 20,
		InFlightBatches:       4,
		PollInterval:          2 * time.Second,
		ClaimLinger:           5 * time.Millisecond,
		DisableWakeup:         true,
		Retry:                 retry.Policy{Base: 100 * time.Millisecond, Max: time.Minute},
		ProduceTimeout:        5 * time.Second,
		BatchTimeout:          10 * time.Second,
		ShutdownTimeout:       5 * time.Second,
		Instance:              "relay-a",
		MaxAttempts:           3,
		DisableStuckBlocksKey: true,
		OutageAlertAfter:      30 * time.Second,
		LagAlertAfter:         2 * time.Minute,
		DeleteOnSend:          true,
		Durability:            relay.DurabilityStrict,
	}
	if got := cfg.relayConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("relay config:\n got %+v\nwant %+v", got, want)
	}
	if cfg.MigrateOnStart || cfg.HTTPAddr != "off" || cfg.MaxAttempts != 3 || cfg.ClientID != "billing-relay" {
		t.Errorf("config %+v", cfg)
	}
}

// Every invalid value is reported with the name of its environment variable,
// never the Go field's, and makes run exit 2.
func TestConfigInvalidValueNamesTheVariable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, value, want string
	}{
		{"RELAY_BATCH_SIZE", "abc", `RELAY_BATCH_SIZE: "abc" is not an integer`},
		{"RELAY_BATCH_SIZE", "0", "RELAY_BATCH_SIZE: 0: must be between 1 and 100000"},
		{"RELAY_BATCH_SIZE", "100001", "RELAY_BATCH_SIZE: 100001: must be between 1 and 100000"},
		{"RELAY_IN_FLIGHT_BATCHES", "0", "RELAY_IN_FLIGHT_BATCHES: 0: must be between 1 and 64"},
		{"RELAY_IN_FLIGHT_BATCHES", "65", "RELAY_IN_FLIGHT_BATCHES: 65: must be between 1 and 64"},
		{"RELAY_BATCH_SIZE", "99999999999999999999999", `RELAY_BATCH_SIZE: "99999999999999999999999" is out of range`},
		{"RELAY_BATCH_MAX_BYTES", "100", "RELAY_BATCH_MAX_BYTES: 100: must be at least 1024"},
		{"RELAY_MAX_ATTEMPTS", "0", "RELAY_MAX_ATTEMPTS: 0: must be at least 1"},
		{"RELAY_MAX_ATTEMPTS", "many", `RELAY_MAX_ATTEMPTS: "many" is not an integer`},
		{"RELAY_SHUTDOWN_TIMEOUT", "soon", `RELAY_SHUTDOWN_TIMEOUT: "soon" is not a duration`},
		{"RELAY_SHUTDOWN_TIMEOUT", "30", `RELAY_SHUTDOWN_TIMEOUT: "30" is not a duration`},
		{"RELAY_SHUTDOWN_TIMEOUT", "-1s", "RELAY_SHUTDOWN_TIMEOUT: -1s: must be positive"},
		{"RELAY_POLL_INTERVAL", "0s", "RELAY_POLL_INTERVAL: 0s: must be positive"},
		{"RELAY_RETRY_BASE", "-5s", "RELAY_RETRY_BASE: -5s: must be positive"},
		{"RELAY_RETRY_MAX", "x", `RELAY_RETRY_MAX: "x" is not a duration`},
		{"RELAY_WAKEUP", "yes", `RELAY_WAKEUP: "yes" is not a boolean`},
		{"RELAY_MIGRATE_ON_START", "nope", `RELAY_MIGRATE_ON_START: "nope" is not a boolean`},
		{"RELAY_SCHEMA", "Outbox", `RELAY_SCHEMA: "Outbox" is not a valid schema name`},
		{"RELAY_SCHEMA", "drop table;", `RELAY_SCHEMA: "drop table;" is not a valid schema name`},
		{"RELAY_KAFKA_BROKERS", "localhost", `RELAY_KAFKA_BROKERS: "localhost": want host:port`},
		{"RELAY_KAFKA_BROKERS", "k1:9092,k2:http", `RELAY_KAFKA_BROKERS: "k2:http": port "http" is not a number`},
		{"RELAY_KAFKA_BROKERS", ":9092", `RELAY_KAFKA_BROKERS: ":9092": missing host`},
		{"RELAY_KAFKA_BROKERS", "k1:9092,", `RELAY_KAFKA_BROKERS: "": want host:port`},
		{"RELAY_KAFKA_BROKERS", "k1:70000", `RELAY_KAFKA_BROKERS: "k1:70000": port "70000" is not a number`},
		{"RELAY_HTTP_ADDR", "8080", `RELAY_HTTP_ADDR: "8080": want host:port`},
		{"RELAY_LOG_FORMAT", "xml", `RELAY_LOG_FORMAT: "xml": use json or text`},
		{"RELAY_LOG_LEVEL", "verbose", `RELAY_LOG_LEVEL: "verbose": use debug, info, warn or error`},
		{"RELAY_CLIENT_ID", "   ", "RELAY_CLIENT_ID: must not be blank"},
		{"RELAY_DATABASE_URL", "postgres://app@db:port/x", "RELAY_DATABASE_URL: database url: cannot parse it"},
		{"RELAY_DATABASE_URL_FILE", "/nonexistent/db-url", "RELAY_DATABASE_URL_FILE: cannot read it"},
	}
	for _, tt := range tests {
		t.Run(tt.name+"="+tt.value, func(t *testing.T) {
			t.Parallel()
			environ := map[string]string{tt.name: tt.value}
			_, err := loadConfig(mapEnv(environ))
			if err == nil {
				t.Fatalf("no error for %s=%q", tt.name, tt.value)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\ndoes not contain %q", err, tt.want)
			}
			if exitCode(err) != 2 {
				t.Errorf("exit code %d, want 2", exitCode(err))
			}
			for _, v := range configVars {
				if strings.Contains(err.Error(), v.field) {
					t.Errorf("error names the Go field %s: %q", v.field, err)
				}
			}

			// The same through run, for every command that reads the
			// configuration.
			for _, cmd := range [][]string{{"run"}, {}, {"migrate", "status"}, {"dev", "--kafka-addr", "127.0.0.1:0"}} {
				var stdout, stderr bytes.Buffer
				err := run(context.Background(), cmd, mapEnv(environ), &stdout, &stderr)
				if code := exitCode(err); code != 2 {
					t.Fatalf("relay %v: exit code %d (%v), want 2", cmd, code, err)
				}
				if !strings.Contains(err.Error(), tt.want) {
					t.Errorf("relay %v: error %q does not contain %q", cmd, err, tt.want)
				}
			}
		})
	}
}

func TestConfigReportsEveryProblemAtOnce(t *testing.T) {
	t.Parallel()
	_, err := loadConfig(mapEnv(map[string]string{
		"RELAY_BATCH_SIZE":       "abc",
		"RELAY_SCHEMA":           "Bad-Schema",
		"RELAY_SHUTDOWN_TIMEOUT": "forever",
		"RELAY_MAX_ATTEMPTS":     "0",
		"RELAY_KAFKA_BROKERS":    "nohostport",
		"RELAY_WAKEUP":           "maybe",
	}))
	if err == nil {
		t.Fatal("no error")
	}
	if _, ok := errors.AsType[*configError](err); !ok {
		t.Errorf("error %T is not a *configError", err)
	}
	lines := strings.Split(err.Error(), "\n")
	wantOrder := []string{"RELAY_KAFKA_BROKERS", "RELAY_SCHEMA", "RELAY_MAX_ATTEMPTS", "RELAY_SHUTDOWN_TIMEOUT", "RELAY_BATCH_SIZE", "RELAY_WAKEUP"}
	if len(lines) != 1+len(wantOrder) {
		t.Fatalf("want a header and %d lines, one per variable, got:\n%s", len(wantOrder), err)
	}
	for i, name := range wantOrder {
		if !strings.HasPrefix(strings.TrimSpace(lines[i+1]), name+": ") {
			t.Errorf("line %d is %q, want it to be about %s", i+1, lines[i+1], name)
		}
	}
	for _, field := range []string{"BatchSize", "ShutdownTimeout", "Wakeup", "MaxAttempts"} {
		if strings.Contains(err.Error(), field) {
			t.Errorf("error names the Go field %s:\n%s", field, err)
		}
	}
}

func TestConfigDatabaseURLFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "url")
	if err := os.WriteFile(file, []byte("postgres://from-file@db:5432/app?sslmode=disable\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(mapEnv(map[string]string{
		"RELAY_DATABASE_URL":      "postgres://from-env@db:5432/app",
		"RELAY_DATABASE_URL_FILE": file,
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DatabaseURL != "postgres://from-file@db:5432/app?sslmode=disable" {
		t.Errorf("database URL %q, want the file's content without its newline", cfg.DatabaseURL)
	}

	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = loadConfig(mapEnv(map[string]string{"RELAY_DATABASE_URL_FILE": empty}))
	if err == nil || !strings.Contains(err.Error(), "RELAY_DATABASE_URL_FILE: "+empty+" is empty") {
		t.Errorf("empty file: error %v", err)
	}

	// A bad URL in the file is reported against the file's variable, and
	// without its password.
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("postgres://app:Fi1eSecret@db:port/app\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = loadConfig(mapEnv(map[string]string{"RELAY_DATABASE_URL_FILE": bad}))
	if err == nil || !strings.Contains(err.Error(), "RELAY_DATABASE_URL_FILE: database url: cannot parse it") {
		t.Errorf("bad URL in file: error %v", err)
	}
	if strings.Contains(err.Error(), "Fi1eSecret") {
		t.Errorf("error shows the password: %v", err)
	}
}

// A database password must never reach an error message or a log line,
// whether the URL cannot be parsed (exit 2) or the database cannot be
// reached (migrate exits 1; run waits for it, logging each attempt, until
// stopped).
func TestDatabasePasswordNeverShown(t *testing.T) {
	t.Parallel()
	const secret = "S3cret-Pa55"
	closed := closedPort(t)
	tests := []struct {
		name string
		url  string
		code int
	}{
		{"unparsable URL", "postgres://app:" + secret + "@db.example:notaport/app", 2},
		{"unparsable key=value", "host=db port=notaport user=app password=" + secret, 2},
		{"unreachable URL", "postgres://app:" + secret + "@" + closed + "/app?sslmode=disable&connect_timeout=5", 1},
		{"unreachable key=value", "host=127.0.0.1 port=" + portOf(closed) + " user=app password=" + secret + " dbname=app sslmode=disable", 1},
		{"password in query", "postgres://app@" + closed + "/app?sslmode=disable&password=" + secret, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, args := range [][]string{{"run"}, {"migrate"}} {
				var stdout bytes.Buffer
				var stderr syncBuffer
				env := map[string]string{"RELAY_DATABASE_URL": tt.url, "RELAY_HTTP_ADDR": "off"}
				var err error
				if tt.code == 1 && args[0] == "run" {
					// The relay waits for the database: stop it once it
					// has said so.
					ctx, cancel := context.WithCancel(context.Background())
					done := make(chan error, 1)
					go func() { done <- run(ctx, args, mapEnv(env), &stdout, &stderr) }()
					relaytest.WaitFor(t, 30*time.Second, "database_unavailable", func() bool {
						return strings.Contains(stderr.String(), `"msg":"database_unavailable"`)
					})
					cancel()
					if err = <-done; err != nil {
						t.Fatalf("relay run stopped while waiting for the database: %v, want nil", err)
					}
					err = errors.New("")
				} else if err = run(context.Background(), args, mapEnv(env), &stdout, &stderr); exitCode(err) != tt.code {
					t.Fatalf("relay %v: exit code %d (%v), want %d", args, exitCode(err), err, tt.code)
				}
				all := err.Error() + stdout.String() + stderr.String()
				if strings.Contains(all, secret) {
					t.Errorf("relay %v shows the password:\nerror: %v\nstdout: %s\nstderr: %s", args, err, stdout.String(), stderr.String())
				}
				if tt.code == 1 && args[0] == "run" && !strings.Contains(stderr.String(), `"database":"app@`+closed+`/app"`) {
					t.Errorf("start log does not name the database as app@%s/app:\n%s", closed, stderr.String())
				}
			}
		})
	}
}

func TestConfigVarsAreDocumented(t *testing.T) {
	t.Parallel()
	// Names that scripts, compose files and the Helm chart depend on: fixed.
	fixed := []string{"RELAY_DATABASE_URL", "RELAY_KAFKA_BROKERS", "RELAY_SCHEMA", "RELAY_HTTP_ADDR", "RELAY_MAX_ATTEMPTS", "RELAY_SHUTDOWN_TIMEOUT"}
	names := map[string]bool{}
	for _, v := range ConfigVars() {
		names[v.Name] = true
		if !strings.HasPrefix(v.Name, "RELAY_") {
			t.Errorf("%s lacks the RELAY_ prefix", v.Name)
		}
		if v.Description == "" {
			t.Errorf("%s has no desc tag", v.Name)
		}
	}
	for _, name := range fixed {
		if !names[name] {
			t.Errorf("%s is missing", name)
		}
	}
	if n := reflect.TypeFor[Config]().NumField(); n != len(ConfigVars()) {
		t.Errorf("Config has %d fields but %d variables: every field needs an env tag", n, len(ConfigVars()))
	}
}

const (
	tableStart = "<!-- config-table:start -->"
	tableEnd   = "<!-- config-table:end -->"
)

// The README's configuration table must be what "relay help config" prints.
func TestREADMEConfigTable(t *testing.T) {
	t.Parallel()
	const fix = "regenerate it: go run ./cmd/relay help config --markdown, and paste the output between the lines " + tableStart + " and " + tableEnd
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatalf("read README.md: %v; the README must hold the configuration table: %s", err, fix)
	}
	_, rest, ok := strings.Cut(string(readme), tableStart)
	if !ok {
		t.Fatalf("README.md has no %s marker; %s", tableStart, fix)
	}
	table, _, ok := strings.Cut(rest, tableEnd)
	if !ok {
		t.Fatalf("README.md has no %s marker after %s; %s", tableEnd, tableStart, fix)
	}
	if got, want := strings.TrimSpace(table), strings.TrimSpace(configTable()); got != want {
		t.Fatalf("README.md's configuration table is out of date; %s\n\ngot:\n%s\n\nwant:\n%s", fix, got, want)
	}
}

// Every field relay.Config.ValidateGiven can report maps to the variable
// that sets it, so its problems are named after the variable.
func TestRelayConfigProblemsMapToVariables(t *testing.T) {
	t.Parallel()
	bad := relay.Config{Retry: retry.Policy{Base: time.Minute, Max: time.Second}, Durability: relay.DurabilityStrict + 1, SentRetention: -1}
	err := bad.ValidateGiven()
	if err == nil {
		t.Fatal("no problems")
	}
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		fe, ok := errors.AsType[*relay.FieldError](e)
		if !ok {
			t.Fatalf("error %T is not a *relay.FieldError", e)
		}
		for _, field := range []string{fe.Field, fe.Other} {
			if field == "" {
				continue
			}
			if name := relayVar(field); !strings.HasPrefix(name, envPrefix) {
				t.Errorf("relay field %s maps to %q", field, name)
			}
		}
	}
}
