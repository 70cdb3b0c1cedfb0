package main

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/migrations"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	relaytest.RemoveRelayBinary()
	os.Exit(code)
}

// closedPort returns a loopback host:port that nothing listens on.
func closedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

// runCLI runs the program in-process with an empty environment.
func runCLI(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err = run(context.Background(), args, mapEnv(env), &out, &errOut)
	return out.String(), errOut.String(), err
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"-h"}, {"-help"}, {"help"}} {
		stdout, _, err := runCLI(t, nil, args...)
		if err != nil {
			t.Fatalf("relay %v: %v", args, err)
		}
		for _, want := range []string{"Usage: relay [command]", "run ", "dev ", "migrate ", "version ", "help ", "Exit codes"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("relay %v: usage lacks %q:\n%s", args, want, stdout)
			}
		}
	}
	for _, c := range commands() {
		for _, flag := range []string{"--help", "-h"} {
			stdout, stderr, err := runCLI(t, nil, c.name, flag)
			if err != nil {
				t.Fatalf("relay %s %s: %v (exit %d)", c.name, flag, err, exitCode(err))
			}
			if !strings.HasPrefix(stdout, "Usage: relay "+c.name) {
				t.Errorf("relay %s %s: stdout does not start with its usage:\n%s", c.name, flag, stdout)
			}
			if stderr != "" {
				t.Errorf("relay %s %s: wrote to stderr: %s", c.name, flag, stderr)
			}
		}
		// "relay help <command>" prints the same.
		viaHelp, _, err := runCLI(t, nil, "help", c.name)
		if err != nil {
			t.Fatal(err)
		}
		viaFlag, _, _ := runCLI(t, nil, c.name, "--help")
		if viaHelp != viaFlag {
			t.Errorf("relay help %s differs from relay %s --help:\n%s\n---\n%s", c.name, c.name, viaHelp, viaFlag)
		}
	}
	stdout, _, _ := runCLI(t, nil, "dev", "--help")
	for _, want := range []string{"-kafka-addr", "127.0.0.1:9092", "-partitions", "KEEPS NOTHING ACROSS RESTARTS"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("relay dev --help lacks %q:\n%s", want, stdout)
		}
	}
	stdout, _, _ = runCLI(t, nil, "help", "config", "--markdown")
	if !strings.HasPrefix(stdout, "| Variable | Default | Description |") || !strings.Contains(stdout, "`RELAY_SHUTDOWN_TIMEOUT` | `30s` |") {
		t.Errorf("relay help config:\n%s", stdout)
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"deliver"}, `unknown command "deliver"`},
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"run", "--bogus"}, "run: flag provided but not defined: -bogus"},
		{[]string{"run", "extra"}, `run: unexpected argument "extra"`},
		{[]string{"migrate", "sideways"}, `migrate: unknown action "sideways"`},
		{[]string{"migrate", "up", "down"}, `migrate: unexpected argument "down"`},
		{[]string{"migrate", "--force"}, "migrate: flag provided but not defined: -force"},
		{[]string{"version", "--short"}, "version: flag provided but not defined: -short"},
		{[]string{"dev", "--kafka-addr", "9092"}, `dev: --kafka-addr "9092": want host:port`},
		{[]string{"dev", "--kafka-addr", ":9092"}, `dev: --kafka-addr ":9092": want host:port`},
		{[]string{"dev", "--partitions", "0"}, "dev: --partitions 0: must be at least 1"},
		{[]string{"dev", "--partitions", "three"}, `dev: invalid value "three" for flag -partitions`},
		{[]string{"help", "deliver"}, `help: unknown topic "deliver"`},
	}
	for _, tt := range tests {
		stdout, stderr, err := runCLI(t, nil, tt.args...)
		if code := exitCode(err); code != 2 {
			t.Errorf("relay %v: exit code %d (%v), want 2", tt.args, code, err)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("relay %v: error %q does not contain %q", tt.args, err, tt.want)
		}
		if stdout != "" || stderr != "" {
			t.Errorf("relay %v: printed %q %q; the error alone is printed, by main", tt.args, stdout, stderr)
		}
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	stdout, _, err := runCLI(t, nil, "version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stdout, "relay ") || !strings.Contains(stdout, runtime.Version()) {
		t.Errorf("version output %q", stdout)
	}
}

func TestMigrateCommand(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t) // migrated already
	env := map[string]string{"RELAY_DATABASE_URL": db.URL, "RELAY_SCHEMA": db.Schema}
	// Every migration is applied but the last, which is as want says.
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("embedded migrations: %v %v", files, err)
	}
	slices.Sort(files)
	status := func(want string) {
		t.Helper()
		stdout, _, err := runCLI(t, env, "migrate", "status")
		if err != nil {
			t.Fatalf("migrate status: %v", err)
		}
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		if len(lines) != len(files)+1 || !strings.HasPrefix(lines[0], "VERSION") {
			t.Fatalf("migrate status printed:\n%s", stdout)
		}
		for i, file := range files {
			state := "applied"
			if i == len(files)-1 {
				state = want
			}
			version := strings.TrimLeft(file[:strings.IndexByte(file, '_')], "0")
			f := strings.Fields(lines[i+1])
			if f[0] != version || f[1] != state || f[len(f)-1] != file {
				t.Fatalf("migrate status: %q, want version %s %s %s", lines[i+1], version, state, file)
			}
		}
	}
	status("applied")
	if stdout, _, err := runCLI(t, env, "migrate", "down"); err != nil || !strings.Contains(stdout, "rolled back") {
		t.Fatalf("migrate down: %v %q", err, stdout)
	}
	status("pending")
	if stdout, _, err := runCLI(t, env, "migrate"); err != nil || !strings.Contains(stdout, "applied 1 migration") {
		t.Fatalf("migrate (up) %s: %v %q", files[len(files)-1], err, stdout)
	}
	status("applied")
	if stdout, _, err := runCLI(t, env, "migrate", "up"); err != nil || !strings.Contains(stdout, "applied 0 migration") {
		t.Fatalf("migrate up again: %v %q", err, stdout)
	}
	if got := db.Count(t, "pending"); got != 0 {
		t.Errorf("%d pending rows in a fresh outbox", got)
	}
}

func TestDialableAddressOfWildcardListener(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		":8080":          "localhost:8080",
		"[::]:8080":      "localhost:8080",
		"0.0.0.0:8080":   "localhost:8080",
		"127.0.0.1:8080": "127.0.0.1:8080",
		"relay:9000":     "relay:9000",
		"not an address": "not an address",
	} {
		if got := dialable(in); got != want {
			t.Errorf("dialable(%q) = %q, want %q", in, got, want)
		}
	}
}
