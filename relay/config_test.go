package relay_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/retry"
)

// fieldErrors returns the *relay.FieldError of err, a join of them.
func fieldErrors(t *testing.T, err error) []*relay.FieldError {
	t.Helper()
	if err == nil {
		return nil
	}
	var out []*relay.FieldError
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		fe, ok := errors.AsType[*relay.FieldError](e)
		if !ok {
			t.Fatalf("error %T (%v) is not a *relay.FieldError", e, e)
		}
		out = append(out, fe)
	}
	return out
}

// The zero Config is valid (every setting takes its default), and so are
// the defaults given explicitly.
func TestValidateAcceptsTheDefaults(t *testing.T) {
	t.Parallel()
	if err := (relay.Config{}).Validate(); err != nil {
		t.Errorf("zero Config: %v", err)
	}
	given := relay.Config{
		BatchSize: 1000, BatchMaxBytes: relay.DefaultBatchMaxBytes, InFlightBatches: 2, PollInterval: 500 * time.Millisecond,
		Retry: retry.Policy{Base: time.Second, Max: 5 * time.Minute}, ProduceTimeout: 30 * time.Second, BatchTimeout: time.Minute, ShutdownTimeout: 30 * time.Second,
		MaxAttempts: 10, OutageAlertAfter: time.Minute, LagAlertAfter: 5 * time.Minute, Durability: relay.DurabilityStrict,
	}
	for name, validate := range map[string]func() error{"Validate": given.Validate, "ValidateGiven": given.ValidateGiven} {
		if err := validate(); err != nil {
			t.Errorf("%s of the defaults given: %v", name, err)
		}
	}
}

func TestValidateNamesTheField(t *testing.T) {
	t.Parallel()
	tests := []struct {
		cfg  relay.Config
		want string // the error; "" for none
	}{
		{relay.Config{BatchSize: -1}, "BatchSize: -1: must be between 1 and 100000"},
		{relay.Config{BatchSize: 100001}, "BatchSize: 100001: must be between 1 and 100000"},
		{relay.Config{BatchSize: 100000}, ""},
		{relay.Config{BatchMaxBytes: 1023}, "BatchMaxBytes: 1023: must be at least 1024"},
		{relay.Config{BatchMaxBytes: 1024}, ""},
		{relay.Config{InFlightBatches: 65}, "InFlightBatches: 65: must be between 1 and 64"},
		{relay.Config{PollInterval: -time.Second}, "PollInterval: -1s: must be positive"},
		{relay.Config{ClaimLinger: -time.Millisecond}, "ClaimLinger: -1ms: must be between 0 and 1s"},
		{relay.Config{ClaimLinger: 2 * time.Second}, "ClaimLinger: 2s: must be between 0 and 1s"},
		{relay.Config{ClaimLinger: 5 * time.Millisecond}, ""},
		{relay.Config{Retry: retry.Policy{Base: -time.Second}}, "Retry.Base: -1s: must be positive"},
		{relay.Config{Retry: retry.Policy{Max: -time.Second}}, "Retry.Max: -1s: must be positive"},
		{relay.Config{Retry: retry.Policy{Base: time.Minute, Max: time.Second}}, "Retry.Max: 1s: must not be less than Retry.Base (1m0s)"},
		{relay.Config{ProduceTimeout: -time.Second}, "ProduceTimeout: -1s: must be positive"},
		{relay.Config{BatchTimeout: -time.Second}, "BatchTimeout: -1s: must be positive"},
		{relay.Config{ShutdownTimeout: -time.Second}, "ShutdownTimeout: -1s: must be positive"},
		{relay.Config{MaxAttempts: -3}, "MaxAttempts: -3: must be at least 1"},
		{relay.Config{OutageAlertAfter: -time.Second}, "OutageAlertAfter: -1s: must be positive"},
		{relay.Config{LagAlertAfter: -time.Second}, "LagAlertAfter: -1s: must be positive"},
		{relay.Config{SentRetention: -time.Second}, "SentRetention: -1s: must not be negative"},
		{relay.Config{Durability: relay.DurabilityStrict + 1}, "Durability: 3: must be DurabilityOff, DurabilityWarn or DurabilityStrict"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if got := fmt.Sprint(err); (tt.want == "" && err != nil) || (tt.want != "" && got != tt.want) {
			t.Errorf("Validate of %+v: %v, want %q", tt.cfg, err, tt.want)
		}
	}
}

// Every problem is reported at once, each a *FieldError; the one that
// compares two fields names the other.
func TestValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	errs := fieldErrors(t, relay.Config{BatchSize: -1, PollInterval: -1, Retry: retry.Policy{Base: time.Minute, Max: time.Second}}.Validate())
	var fields []string
	for _, fe := range errs {
		fields = append(fields, fe.Field)
	}
	if got := strings.Join(fields, " "); got != "BatchSize PollInterval Retry.Max" {
		t.Fatalf("fields %q, want BatchSize PollInterval Retry.Max", got)
	}
	if fe := errs[2]; fe.Other != "Retry.Base" || !strings.Contains(fe.Problem, fe.Other) || fe.Value != time.Second {
		t.Errorf("Retry.Max's error %+v: want Other Retry.Base, named in the problem, and the value 1s", fe)
	}
}

// ValidateGiven takes a zero for a value, not the default, but for
// SentRetention (0 goes with DeleteOnSend).
func TestValidateGivenChecksZeros(t *testing.T) {
	t.Parallel()
	var fields []string
	for _, fe := range fieldErrors(t, relay.Config{}.ValidateGiven()) {
		fields = append(fields, fe.Field)
		if fe.Value != int64(0) && fe.Value != time.Duration(0) {
			t.Errorf("%s: value %v (%T), want 0", fe.Field, fe.Value, fe.Value)
		}
	}
	want := "BatchSize BatchMaxBytes InFlightBatches PollInterval Retry.Base Retry.Max ProduceTimeout BatchTimeout ShutdownTimeout MaxAttempts OutageAlertAfter LagAlertAfter"
	if got := strings.Join(fields, " "); got != want {
		t.Errorf("ValidateGiven of the zero Config reports\n %s\nwant\n %s", got, want)
	}
}
