package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

func TestVersionFlagIsTheVersionCommand(t *testing.T) {
	t.Parallel()
	want, _, err := runCLI(t, nil, "version")
	if err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{"--version", "-version"} {
		got, _, err := runCLI(t, nil, flag)
		if err != nil {
			t.Fatalf("relay %s: %v", flag, err)
		}
		if got != want {
			t.Errorf("relay %s printed %q, relay version %q", flag, got, want)
		}
	}
}

// TestVersionStampedAtBuild builds the binary the way the Dockerfile does,
// with -ldflags "-X main.version=…", and reads the version back.
func TestVersionStampedAtBuild(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "relay")
	const stamped = "v9.8.7-test"
	out, err := exec.Command("go", "build", "-o", bin, "-ldflags", "-X main.version="+stamped, "github.com/outboxrelay/relay/cmd/relay").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	want := "relay " + stamped + "\n" + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + "\n"
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, err := exec.Command(bin, args...).Output()
		if err != nil {
			t.Fatalf("relay %v: %v", args, err)
		}
		if string(out) != want {
			t.Errorf("relay %v printed %q, want %q", args, out, want)
		}
	}
}

func TestBuildInfoMetric(t *testing.T) {
	t.Parallel()
	families, err := newMetrics().reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "outbox_relay_build_info" {
			continue
		}
		if len(f.GetMetric()) != 1 {
			t.Fatalf("outbox_relay_build_info has %d series, want 1", len(f.GetMetric()))
		}
		m := f.GetMetric()[0]
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["version"] != versionString() || labels["goversion"] != runtime.Version() || len(labels) != 2 {
			t.Errorf("outbox_relay_build_info labels %v, want version=%s goversion=%s", labels, versionString(), runtime.Version())
		}
		if v := m.GetGauge().GetValue(); v != 1 {
			t.Errorf("outbox_relay_build_info = %v, want 1", v)
		}
		return
	}
	t.Fatal("outbox_relay_build_info is not exported")
}
