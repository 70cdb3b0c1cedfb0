package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/constant"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// repoRoot is the module's root, seen from this package's directory.
const repoRoot = "../.."

// The project's design notes are internal: what users read (the README,
// docs/, examples/, deploy/) and the code's comments must stand alone, so
// nothing in the repository may point at notes they never see.
func TestNothingRefersToInternalDesignNotes(t *testing.T) {
	t.Parallel()
	// Spelled so that this file does not match itself.
	needles := []string{strings.ToUpper("design") + ".md", "../" + "shared"}
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, path)
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if d.Name() == ".git" {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if bytes.IndexByte(b, 0) >= 0 {
			return nil // binary, e.g. the console's screenshot
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, n := range needles {
				if strings.Contains(line, n) {
					t.Errorf("%s:%d refers to the internal design notes (%s); state the point itself: %s", rel, i+1, n, strings.TrimSpace(line))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// logCall is one call of a *slog.Logger method in the relay's code.
type logCall struct {
	msg   string
	level string // DEBUG, INFO, WARN, ERROR; empty when not a constant
	pos   string
}

// slogMethods maps each *slog.Logger method that writes a record to the
// index of its message argument and its level ("" for Log and LogAttrs,
// which take the level as their second argument).
var slogMethods = map[string]struct {
	msgArg int
	level  string
}{
	"Debug": {0, "DEBUG"}, "Info": {0, "INFO"}, "Warn": {0, "WARN"}, "Error": {0, "ERROR"},
	"DebugContext": {1, "DEBUG"}, "InfoContext": {1, "INFO"}, "WarnContext": {1, "WARN"}, "ErrorContext": {1, "ERROR"},
	"Log": {2, ""}, "LogAttrs": {2, ""},
}

// relayLogCalls type-checks every non-test package of the module (the
// packages' dependencies come from the build cache's export data, as
// go list -export reports it) and returns each call of a *slog.Logger method
// that writes a record. A message that is not a constant string is a test
// failure: the table documents stable names, and a computed one is not.
func relayLogCalls(t *testing.T) []logCall {
	t.Helper()
	cmd := exec.Command("go", "list", "-export", "-deps", "-json=ImportPath,Export,Dir,GoFiles,Module", "./...")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	type pkg struct {
		ImportPath, Export, Dir string
		GoFiles                 []string
		Module                  *struct{ Path string }
	}
	exports := map[string]string{}
	var ours []pkg
	for dec := json.NewDecoder(bytes.NewReader(out)); ; {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		exports[p.ImportPath] = p.Export
		// The examples are applications of their own, with their own logs.
		if p.Module != nil && p.Module.Path == "github.com/outboxrelay/relay" &&
			!strings.HasPrefix(p.ImportPath, "github.com/outboxrelay/relay/examples/") {
			ours = append(ours, p)
		}
	}
	if len(ours) == 0 {
		t.Fatal("go list found none of the module's packages")
	}
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	imp := importer.ForCompiler(fset, "gc", func(path string) (io.ReadCloser, error) {
		f, ok := exports[path]
		if !ok || f == "" {
			return nil, fmt.Errorf("no export data for %s", path)
		}
		return os.Open(f)
	})
	var calls []logCall
	for _, p := range ours {
		var files []*ast.File
		for _, name := range p.GoFiles {
			f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			files = append(files, f)
		}
		info := &types.Info{
			Types:      map[ast.Expr]types.TypeAndValue{},
			Selections: map[*ast.SelectorExpr]*types.Selection{},
			Defs:       map[*ast.Ident]types.Object{},
			Uses:       map[*ast.Ident]types.Object{},
		}
		if _, err := (&types.Config{Importer: imp}).Check(p.ImportPath, fset, files, info); err != nil {
			t.Fatalf("type-check %s: %v", p.ImportPath, err)
		}
		// A function may log a message its callers name (keepSession logs
		// the failure name it is given): such a message is a parameter,
		// and the constants its callers pass are the messages.
		type param struct {
			fn  types.Object
			idx int
		}
		params := map[types.Object]param{}
		for _, f := range files {
			for _, d := range f.Decls {
				fd, ok := d.(*ast.FuncDecl)
				if !ok {
					continue
				}
				i := 0
				for _, field := range fd.Type.Params.List {
					for _, name := range field.Names {
						params[info.Defs[name]] = param{info.Defs[fd.Name], i}
						i++
					}
					if len(field.Names) == 0 {
						i++
					}
				}
			}
		}
		type forwarded struct {
			param
			level, where string
		}
		var passed []forwarded
		for _, f := range files {
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				s := info.Selections[sel]
				m, isLog := slogMethods[sel.Sel.Name]
				if s == nil || s.Kind() != types.MethodVal || !isLog || !isSlogLogger(s.Recv()) {
					return true
				}
				pos := fset.Position(call.Pos())
				rel, _ := filepath.Rel(root, pos.Filename)
				where := fmt.Sprintf("%s:%d", filepath.ToSlash(rel), pos.Line)
				if len(call.Args) <= m.msgArg {
					return true // a method value's call through a variable; none today
				}
				level := m.level
				if level == "" {
					if lv := info.Types[call.Args[1]].Value; lv != nil {
						if n, ok := constant.Int64Val(lv); ok {
							level = slog.Level(n).String()
						}
					}
				}
				arg := call.Args[m.msgArg]
				if id, ok := arg.(*ast.Ident); ok {
					if p, ok := params[info.Uses[id]]; ok {
						passed = append(passed, forwarded{p, level, where})
						return true
					}
				}
				tv := info.Types[arg]
				if tv.Value == nil || tv.Value.Kind() != constant.String {
					t.Errorf("%s: log message is not a constant string", where)
					return true
				}
				calls = append(calls, logCall{msg: constant.StringVal(tv.Value), level: level, pos: where})
				return true
			})
		}
		for _, fw := range passed {
			found := false
			for _, f := range files {
				ast.Inspect(f, func(n ast.Node) bool {
					call, ok := n.(*ast.CallExpr)
					if !ok || len(call.Args) <= fw.idx {
						return true
					}
					var callee *ast.Ident
					switch fun := call.Fun.(type) {
					case *ast.Ident:
						callee = fun
					case *ast.SelectorExpr:
						callee = fun.Sel
					}
					if callee == nil || info.Uses[callee] != fw.fn {
						return true
					}
					found = true
					tv := info.Types[call.Args[fw.idx]]
					pos := fset.Position(call.Pos())
					rel, _ := filepath.Rel(root, pos.Filename)
					where := fmt.Sprintf("%s:%d, logged at %s", filepath.ToSlash(rel), pos.Line, fw.where)
					if tv.Value == nil || tv.Value.Kind() != constant.String {
						t.Errorf("%s: log message is not a constant string", where)
						return true
					}
					calls = append(calls, logCall{msg: constant.StringVal(tv.Value), level: fw.level, pos: where})
					return true
				})
			}
			if !found {
				t.Errorf("%s: the log message is a parameter, and no call in the package passes it", fw.where)
			}
		}
	}
	return calls
}

func isSlogLogger(t types.Type) bool {
	if p, ok := t.(*types.Pointer); ok {
		t = p.Elem()
	}
	n, ok := t.(*types.Named)
	return ok && n.Obj().Pkg() != nil && n.Obj().Pkg().Path() == "log/slog" && n.Obj().Name() == "Logger"
}

// logsTable returns the messages named in the first column of the Logs
// table of docs/operations.md.
func logsTable(t *testing.T) map[string]bool {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Logs\n")
	if !ok {
		t.Fatal("docs/operations.md has no ## Logs section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	names := map[string]bool{}
	inTable := false
	for line := range strings.Lines(section) {
		if strings.HasPrefix(line, "|---") {
			inTable = true // the rows come after the header's separator
			continue
		}
		if !inTable || !strings.HasPrefix(line, "| `") {
			continue
		}
		first := strings.Split(line, "|")[1]
		for _, m := range regexp.MustCompile("`([a-z0-9_]+)`").FindAllStringSubmatch(first, -1) {
			names[m[1]] = true
		}
	}
	return names
}

// Operators search the log by message: every message the relay's code can
// log, whatever its level, has a row in the Logs table of docs/operations.md,
// and the table names no message the code no longer writes.
func TestEveryLogMessageIsInTheLogsTable(t *testing.T) {
	t.Parallel()
	table := logsTable(t)
	calls := relayLogCalls(t)
	if len(calls) < 20 {
		t.Fatalf("found only %d log calls in the module; the extraction is broken", len(calls))
	}
	missing := map[string][]string{}
	for _, c := range calls {
		if table[c.msg] {
			continue
		}
		missing[c.msg] = append(missing[c.msg], c.level+" at "+c.pos)
	}
	for _, msg := range slices.Sorted(maps.Keys(missing)) {
		t.Errorf("docs/operations.md's Logs table has no row for %q (%s)", msg, strings.Join(missing[msg], ", "))
	}
	// And the table lists nothing the code no longer logs.
	logged := map[string]bool{}
	for _, c := range calls {
		logged[c.msg] = true
	}
	for _, msg := range slices.Sorted(maps.Keys(table)) {
		if !logged[msg] {
			t.Errorf("docs/operations.md's Logs table lists %q, which no log call in the module writes", msg)
		}
	}
}
