package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
)

func helpCommand() *command {
	return &command{
		name:    "help",
		summary: "show help for a command, or 'relay help config' for the environment variables",
		args:    "[command|config [--values] [--markdown]]",
		about: `Without an argument, lists the commands. With a command's name, shows its usage.
'relay help config' lists every RELAY_* environment variable with its default
and meaning; --values shows the value in effect instead of the default (read
from this environment, secrets masked); --markdown prints the README's table.`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			values := fs.Bool("values", false, "help config: show the values in effect in this environment, secrets masked")
			markdown := fs.Bool("markdown", false, "help config: print the markdown table of the README")
			return func(_ context.Context, args []string) error {
				// Flags may follow the topic: relay help config --values.
				var topics []string
				for len(args) > 0 {
					topics = append(topics, args[0])
					if err := fs.Parse(args[1:]); err != nil {
						return usageErrorf("help: %v", err)
					}
					args = fs.Args()
				}
				if (*values || *markdown) && (len(topics) != 1 || topics[0] != "config") {
					return usageErrorf("help: --values and --markdown are for 'relay help config'")
				}
				switch {
				case len(topics) == 0:
					printTopUsage(env.stdout)
					return nil
				case len(topics) > 1:
					return usageErrorf("help: want at most one topic, got %d", len(topics))
				case topics[0] == "config":
					switch {
					case *markdown && *values:
						return usageErrorf("help config: --markdown prints the defaults; it does not take --values")
					case *markdown:
						fmt.Fprint(env.stdout, configTable())
					default:
						printConfigHelp(env.stdout, env.getenv, *values)
					}
					return nil
				}
				c := lookupCommand(topics[0])
				if c == nil {
					return usageErrorf("help: unknown topic %q; run 'relay help' for the list", topics[0])
				}
				fs := flag.NewFlagSet("relay "+c.name, flag.ContinueOnError)
				c.flags(fs, env)
				c.printUsage(env.stdout, fs)
				return nil
			}
		},
	}
}

// helpWidth is the width the terminal form of 'relay help config' fits in.
const helpWidth = 100

// printConfigHelp prints the variables for a terminal: each name with its
// default (or, with values, the value in effect), and its description
// wrapped and indented below it.
func printConfigHelp(w io.Writer, getenv func(string) string, values bool) {
	if values {
		fmt.Fprintln(w, "RELAY_* variables and the values in effect here (secrets masked):")
	} else {
		fmt.Fprintln(w, "RELAY_* variables, with their defaults ('relay help config --values' shows the values in effect):")
	}
	width := 0
	for _, v := range configVars {
		width = max(width, len(v.Name))
	}
	for _, v := range configVars {
		var shown string
		switch {
		case values && getenv(v.Name) != "":
			shown = maskSecret(v.Name, getenv(v.Name)) + "  (set)"
		case v.Default == "":
			shown = "(empty)"
		default:
			shown = v.Default
		}
		fmt.Fprintf(w, "\n%-*s  %s\n", width, v.Name, shown)
		for _, line := range wrap(v.Description, helpWidth-4) {
			fmt.Fprintln(w, "    "+line)
		}
	}
}

// secretVars hold credentials: 'relay help config --values' masks them.
var secretVars = map[string]bool{
	"RELAY_KAFKA_SASL_PASSWORD": true,
	"RELAY_ADMIN_TOKEN":         true,
	// A Slack webhook URL is a credential in itself.
	"RELAY_ALERT_WEBHOOK_URL": true,
}

// maskSecret shows a value of name fit for a terminal: secrets as *****,
// the database URL without its password.
func maskSecret(name, value string) string {
	switch {
	case secretVars[name]:
		return "*****"
	case name == "RELAY_DATABASE_URL":
		if u, err := url.Parse(value); err == nil && u.User != nil {
			if _, ok := u.User.Password(); ok {
				u.User = url.UserPassword(u.User.Username(), "xxxxx")
				return strings.Replace(u.String(), "xxxxx", "*****", 1)
			}
			return value
		}
		if strings.Contains(value, "password") {
			return "(key=value pairs with a password: not shown)"
		}
	}
	return value
}

// wrap breaks s into lines of at most width runes, at spaces.
func wrap(s string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(s) {
		if line != "" && len([]rune(line))+1+len([]rune(word)) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += word
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
