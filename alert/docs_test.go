package alert

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// kindsDeclared returns the value of every Kind constant declared in this
// package's source, read with go/parser so that a new kind cannot be
// forgotten by a hand-kept list.
func kindsDeclared(t *testing.T) []string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "Kind" {
					continue
				}
				for _, v := range vs.Values {
					lit, ok := v.(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING {
						t.Fatalf("%s: a Kind constant that is not a string literal", fset.Position(v.Pos()))
					}
					s, _ := strconv.Unquote(lit.Value)
					kinds = append(kinds, s)
				}
			}
		}
	}
	return kinds
}

// Operators look alerts up in the runbook's Alerts table: every kind the
// relay can raise must have a row there saying what to do.
func TestEveryKindIsInTheRunbook(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Alerts\n")
	if !ok {
		t.Fatal("docs/operations.md has no ## Alerts section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	kinds := kindsDeclared(t)
	if len(kinds) == 0 {
		t.Fatal("found no Kind constants in the package source")
	}
	for _, k := range kinds {
		if !strings.Contains(section, "\n| `"+k+"` |") {
			t.Errorf("docs/operations.md's Alerts table has no row for kind %s", k)
		}
	}
}
