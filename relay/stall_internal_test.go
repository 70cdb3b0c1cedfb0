package relay

import (
	"testing"
	"time"
)

// The stall bound with the defaults is the figure the docs give, and a
// produce timeout of days never makes it a value Postgres refuses (every
// claim would then fail).
func TestStallBoundIsTheDocumentedOneAndFitsPostgres(t *testing.T) {
	t.Parallel()
	if got := (Config{}).withDefaults().stallBound(); got != 2*time.Minute+6*time.Second {
		t.Errorf("default stall bound %v, docs say 2m6s", got)
	}
	if got := (Config{}).withDefaults().stallBoundMillis(); got != "126000" {
		t.Errorf("default stall bound as a setting %q, want 126000", got)
	}
	long := Config{BatchTimeout: 2 * 30 * 24 * time.Hour}.withDefaults()
	if got := long.stallBoundMillis(); got != "2147483647" {
		t.Errorf("stall bound with a 30-day produce timeout %q, want Postgres's largest, 2147483647", got)
	}
}
