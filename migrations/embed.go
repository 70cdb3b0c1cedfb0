// Package migrations holds the relay's goose SQL migrations, embedded so the
// binary can migrate a database on its own.
//
// The files use unqualified names: the runner sets search_path to the
// configured schema, so one set of files serves any schema name.
package migrations

import "embed"

// FS holds every *.sql migration in this directory.
//
//go:embed *.sql
var FS embed.FS
