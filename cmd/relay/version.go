package main

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3"
// (the Dockerfile passes its VERSION build argument this way).
var version string

// buildInfo is the gauge outbox_relay_build_info: always 1, with the
// relay's version and the Go version it was built with as labels, so a
// dashboard or an alert can tell which build each instance runs.
func buildInfo() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "outbox_relay_build_info",
		Help: "Always 1; the labels say which build runs: version (set at build time, else the VCS revision, else dev) and goversion.",
	}, []string{"version", "goversion"})
	g.WithLabelValues(versionString(), runtime.Version()).Set(1)
	return g
}

// versionString is the build's version: the one set at build time, else the
// module version or VCS revision Go recorded, else "dev".
func versionString() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev string
	var dirty bool
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return rev
}

func versionCommand() *command {
	return &command{
		name:    "version",
		summary: "print the relay's version and the Go version it was built with",
		about:   "Prints the version (set at build time, else the VCS revision, else dev) and the Go version.",
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			return noArgs("version", func(context.Context) error {
				fmt.Fprintf(env.stdout, "relay %s\n%s %s/%s\n", versionString(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
				return nil
			})
		},
	}
}
