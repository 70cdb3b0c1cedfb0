package relay

import (
	"testing"
	"time"
)

// The stall bound with the defaults is the figure the docs give (that a
// produce timeout of days never makes it a value Postgres refuses is
// pgstore's TestStallBoundSettingFitsPostgres).
func TestStallBoundIsTheDocumentedOne(t *testing.T) {
	t.Parallel()
	if got := (Config{}).withDefaults().stallBound(); got != 2*time.Minute+6*time.Second {
		t.Errorf("default stall bound %v, docs say 2m6s", got)
	}
}
