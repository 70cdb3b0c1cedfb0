package relaytest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// relayPackage is the package of the relay binary.
const relayPackage = "github.com/outboxrelay/relay/cmd/relay"

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

// RelayBinary builds the relay binary once per test process and returns its
// path. When the tests run with -race the binary is built with the race
// detector too, so tests that drive it as a child process (the end-to-end
// tests, the fault suite) check the daemon's goroutines as well as their
// own. Call RemoveRelayBinary from TestMain once the tests are done.
func RelayBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "relay-test-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "relay")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		// By import path, so it builds the same from any test's
		// directory inside the module.
		out, err := exec.Command("go", append(args, relayPackage)...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build %s: %v\n%s", relayPackage, err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// RemoveRelayBinary deletes what RelayBinary built, if it built anything.
func RemoveRelayBinary() {
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
}

// RelayCommand returns a command that runs the relay binary (RelayBinary)
// with args and an environment of exactly the RELAY_* variables of vars:
// inherited RELAY_* variables are dropped, so the shell that runs the tests
// cannot change what they test. The caller sets its output and starts it.
func RelayCommand(t testing.TB, vars map[string]string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(RelayBinary(t), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RELAY_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if raceEnabled && os.Getenv("GORACE") == "" {
		// The race runtime sleeps a second before exiting, to let
		// late reports out; a tenth is plenty and keeps exits quick.
		cmd.Env = append(cmd.Env, "GORACE=atexit_sleep_ms=100")
	}
	for k, v := range vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}
