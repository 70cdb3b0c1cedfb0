// Command relay moves rows from a Postgres outbox table to Kafka.
//
// It is the only part of the project that reads the environment or the
// command line: it turns them into the plain config structs of package relay,
// wires the Postgres pool, the Kafka client and the HTTP health endpoints
// together, and maps errors to exit codes (0 ok, 1 runtime failure, 2 bad
// usage or configuration). Run "relay help" for the subcommands and
// "relay help config" for the environment variables.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	// The first SIGINT or SIGTERM cancels ctx: the relay stops claiming,
	// finishes or releases its batch and run returns. The second one means
	// "now": sigs sees every signal, including the first, so two receives
	// on it are exactly the second signal, whatever the scheduling.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		<-sigs
		fmt.Fprintln(os.Stderr, "relay: second signal: exiting now without waiting for the batch in flight")
		os.Exit(1)
	}()

	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "relay: "+err.Error())
	}
	os.Exit(exitCode(err))
}

// usageError is a mistake on the command line or in the configuration:
// running again without fixing it cannot help. It maps to exit code 2.
type usageError struct {
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

// exitCode maps the error run returned to the process exit code.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if _, ok := errors.AsType[*usageError](err); ok {
		return 2
	}
	return 1
}

// command is one subcommand.
type command struct {
	name    string
	summary string
	// args is the synopsis after "relay <name>", for the usage line.
	args string
	// about is printed under the usage line by --help.
	about string
	// flags declares the command's flags on fs and returns the function
	// that runs it once fs has parsed the arguments.
	flags func(fs *flag.FlagSet, env *environment) func(ctx context.Context, args []string) error
	// hidden leaves the command out of the top-level usage (internal
	// helpers such as bench's child broker).
	hidden bool
}

// environment is what every command receives from run.
type environment struct {
	getenv         func(string) string
	stdout, stderr io.Writer
	// stdin answers confirmation prompts when interactive (a terminal);
	// otherwise destructive commands want --yes.
	stdin       io.Reader
	interactive bool
	// unknown are the RELAY_* variables set that the relay does not read
	// (misspellings, usually), each with the closest name it does read.
	unknown []unknownVar
	// outbox is the --outbox of a stuck action, set once its flags are
	// parsed.
	outbox string
}

// config loads the configuration for a one-shot command, after warning on
// stderr about the unknown RELAY_* variables. The daemons log them instead.
func (e *environment) config() (Config, error) {
	for _, u := range e.unknown {
		fmt.Fprintln(e.stderr, "relay: warning: "+u.String())
	}
	return loadConfig(e.getenv)
}

func commands() []*command {
	return []*command{runCommand(), devCommand(), migrateCommand(), stuckCommand(), verifyCommand(), resendCommand(), healthcheckCommand(), benchCommand(), benchKafkaCommand(), versionCommand(), helpCommand()}
}

func lookupCommand(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	return nil
}

// run is the whole program; main only adds signals and the exit code.
// getenv is the environment (os.Getenv in production, a map in tests).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	env := &environment{getenv: getenv, stdout: stdout, stderr: stderr, stdin: os.Stdin, interactive: stdinIsTerminal(),
		unknown: unknownVars(envNames(getenv))}
	name := "run" // the default command
	switch {
	case len(args) == 0:
	case args[0] == "-h" || args[0] == "-help" || args[0] == "--help":
		printTopUsage(stdout)
		return nil
	case args[0] == "--version" || args[0] == "-version":
		name, args = "version", args[1:]
	case strings.HasPrefix(args[0], "-"):
		// Flags without a command belong to the default command.
	default:
		name, args = args[0], args[1:]
	}
	cmd := lookupCommand(name)
	if cmd == nil {
		return usageErrorf("unknown command %q; run 'relay --help' for the list", name)
	}
	return cmd.exec(ctx, env, args)
}

// exec parses the command's flags and runs it. -h and --help print its usage
// to stdout and succeed.
func (c *command) exec(ctx context.Context, env *environment, args []string) error {
	fs := flag.NewFlagSet("relay "+c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned and printed once, by main
	fn := c.flags(fs, env)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			c.printUsage(env.stdout, fs)
			return nil
		}
		return usageErrorf("%s: %v; run 'relay %s --help' for usage", c.name, err, c.name)
	}
	return fn(ctx, fs.Args())
}

func (c *command) printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", strings.TrimSpace("relay "+c.name+" "+c.args), strings.TrimSpace(c.about))
	hasFlags := false
	fs.VisitAll(func(*flag.Flag) { hasFlags = true })
	if hasFlags {
		fmt.Fprintf(w, "\nFlags:\n")
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
}

func printTopUsage(w io.Writer) {
	fmt.Fprintf(w, `relay moves rows from a Postgres outbox table to Kafka, at least once and in
per-key order.

Usage: relay [command] [flags]
       relay --version

Commands:
`)
	for _, c := range commands() {
		if c.hidden {
			continue
		}
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Without a command, relay runs "relay run". Every command takes --help.
Configuration comes from RELAY_* environment variables: "relay help config".

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration.
`)
}

// noArgs wraps a command body that takes no positional arguments.
func noArgs(name string, fn func(ctx context.Context) error) func(context.Context, []string) error {
	return func(ctx context.Context, args []string) error {
		if len(args) > 0 {
			return usageErrorf("%s: unexpected argument %q; run 'relay %s --help' for usage", name, args[0], name)
		}
		return fn(ctx)
	}
}
