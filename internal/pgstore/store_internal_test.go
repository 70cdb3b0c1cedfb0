package pgstore

import (
	"testing"
	"time"
)

// The stall bound as a setting: the default bound's figure, and a produce
// timeout of days never makes it a value Postgres refuses (every claim
// would then fail).
func TestStallBoundSettingFitsPostgres(t *testing.T) {
	t.Parallel()
	if got := boundSetting(2*time.Minute + 6*time.Second); got != "126000" {
		t.Errorf("default stall bound as a setting %q, want 126000", got)
	}
	// The bound of a 30-day produce timeout (2 BatchTimeouts and more).
	if got := boundSetting(2 * 2 * 30 * 24 * time.Hour); got != "2147483647" {
		t.Errorf("stall bound with a 30-day produce timeout %q, want Postgres's largest, 2147483647", got)
	}
}
