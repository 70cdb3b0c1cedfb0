package kafkasink

import (
	"crypto/rand"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// appendUUID prints a uuid as Postgres and pgtype do, so outbox-uuid is the
// text consumers find in the uuid column.
func TestAppendUUIDIsTheCanonicalForm(t *testing.T) {
	t.Parallel()
	for range 100 {
		u := pgtype.UUID{Valid: true}
		_, _ = rand.Read(u.Bytes[:])
		if got, want := string(appendUUID([]byte("x"), u.Bytes)), "x"+u.String(); got != want {
			t.Fatalf("appendUUID = %s, want %s", got, want)
		}
	}
}
