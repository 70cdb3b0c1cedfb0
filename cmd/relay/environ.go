package main

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"golang.org/x/term"
)

// environKey is how run lists the names of the variables in its
// environment, to warn about the unknown RELAY_* ones: a getenv built over a
// map (as tests give run) answers it with the names, one per line. No real
// environment variable has this name ("=" ends a name), so os.Getenv answers
// "" and run reads os.Environ instead.
const environKey = "=names"

// envNames returns the names of the variables of getenv's environment.
func envNames(getenv func(string) string) []string {
	if s := getenv(environKey); s != "" {
		return strings.Split(s, "\n")
	}
	var names []string
	for _, kv := range os.Environ() {
		if name, _, ok := strings.Cut(kv, "="); ok && name != "" {
			names = append(names, name)
		}
	}
	return names
}

// foreignRelayVars are RELAY_* variables read by something other than the
// relay: the test suite and its benchmarks. They are not misspellings.
func foreignRelayVar(name string) bool {
	return strings.HasPrefix(name, "RELAY_TEST_") || strings.HasPrefix(name, "RELAY_BENCH_") || name == "RELAY_SOAK"
}

// unknownVar is a RELAY_* variable the relay does not read.
type unknownVar struct {
	Name       string
	Suggestion string // the closest variable the relay reads; empty if none is close
}

func (u unknownVar) String() string {
	s := u.Name + " is not a relay variable and is ignored"
	if u.Suggestion != "" {
		s += "; did you mean " + u.Suggestion + "?"
	}
	return s + " ('relay help config' lists them)"
}

// unknownVars returns the RELAY_* names that are not configuration
// variables, sorted, each with a did-you-mean.
func unknownVars(names []string) []unknownVar {
	var out []unknownVar
	for _, name := range names {
		if !strings.HasPrefix(name, envPrefix) || foreignRelayVar(name) || slices.ContainsFunc(configVars, func(v ConfigVar) bool { return v.Name == name }) {
			continue
		}
		out = append(out, unknownVar{Name: name, Suggestion: closestVar(name)})
	}
	slices.SortFunc(out, func(a, b unknownVar) int { return strings.Compare(a.Name, b.Name) })
	return slices.CompactFunc(out, func(a, b unknownVar) bool { return a.Name == b.Name })
}

// closestVar returns the configuration variable nearest to name: the same
// but for underscores or case, or within a few edits.
func closestVar(name string) string {
	squash := func(s string) string { return strings.ToUpper(strings.ReplaceAll(s, "_", "")) }
	best, bestDist := "", 4 // farther than 3 edits is no suggestion
	for _, v := range configVars {
		if squash(v.Name) == squash(name) {
			return v.Name
		}
		if d := editDistance(strings.ToUpper(name), v.Name); d < bestDist {
			best, bestDist = v.Name, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// stdinIsTerminal reports whether standard input is a terminal, where a
// command may ask for confirmation instead of requiring --yes.
func stdinIsTerminal() bool {
	return term.IsTerminal(int(os.Stdin.Fd()))
}

// confirm asks the operator on a terminal, or requires --yes otherwise. It
// returns nil when the action may go ahead. what describes the action
// ("discard 12 rows").
func (e *environment) confirm(yes bool, command, what string) error {
	if yes {
		return nil
	}
	if !e.interactive {
		return usageErrorf("%s: this would %s; add --yes to confirm (stdin is not a terminal, so no question is asked)", command, what)
	}
	fmt.Fprintf(e.stderr, "%s: %s? [y/N] ", command, what)
	var answer string
	_, _ = fmt.Fscanln(e.stdin, &answer)
	if a := strings.ToLower(strings.TrimSpace(answer)); a == "y" || a == "yes" {
		return nil
	}
	return usageErrorf("%s: not confirmed; nothing done", command)
}
