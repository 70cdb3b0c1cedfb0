package main

import (
	"context"
	"flag"
	"fmt"
	"runtime"
	"runtime/debug"
)

// version is set at build time: go build -ldflags "-X main.version=v1.2.3".
var version string

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
