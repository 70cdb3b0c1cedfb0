package main

import (
	"context"
	"flag"
	"fmt"
	"io"
)

func helpCommand() *command {
	return &command{
		name:    "help",
		summary: "show help for a command, or 'relay help config' for the environment variables",
		args:    "[command|config]",
		about: `Without an argument, lists the commands. With a command's name, shows its usage.
'relay help config' prints every RELAY_* environment variable with its default
and meaning, as the markdown table of the README.`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			return func(_ context.Context, args []string) error {
				switch {
				case len(args) == 0:
					printTopUsage(env.stdout)
					return nil
				case len(args) > 1:
					return usageErrorf("help: want at most one topic, got %d", len(args))
				case args[0] == "config":
					printConfigHelp(env.stdout)
					return nil
				}
				c := lookupCommand(args[0])
				if c == nil {
					return usageErrorf("help: unknown topic %q; run 'relay help' for the list", args[0])
				}
				fs := flag.NewFlagSet("relay "+c.name, flag.ContinueOnError)
				c.flags(fs, env)
				c.printUsage(env.stdout, fs)
				return nil
			}
		},
	}
}

// printConfigHelp prints the variables as the README's markdown table.
func printConfigHelp(w io.Writer) {
	fmt.Fprint(w, configTable())
}
