package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// A flood of concurrent probes runs the checks once, not once per probe:
// every probe that arrives while a check runs waits for its answer, and the
// answer is reused for readyFresh.
func TestReadyzFloodRunsOneCheckAtATime(t *testing.T) {
	t.Parallel()
	var running, most, runs atomic.Int32
	release := make(chan struct{})
	rd := &readiness{fresh: time.Hour, checks: []check{{"database", func(context.Context) error {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		runs.Add(1)
		<-release
		return errors.New("dial tcp 10.0.0.7:5432: secret detail")
	}}}}
	srv := httptest.NewServer(rd)
	defer srv.Close()

	const probes = 100
	var wg sync.WaitGroup
	bodies := make([]string, probes)
	codes := make([]int, probes)
	for i := range probes {
		wg.Go(func() {
			resp, err := http.Get(srv.URL)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			codes[i], bodies[i] = resp.StatusCode, string(b)
		})
	}
	// Every probe is in: one runs the check, the others wait for it.
	relaytest.WaitFor(t, 10*time.Second, "the check to start", func() bool { return runs.Load() == 1 })
	close(release)
	wg.Wait()
	if most.Load() != 1 || runs.Load() != 1 {
		t.Errorf("%d probes ran the check %d times, at most %d at once; want once", probes, runs.Load(), most.Load())
	}
	for i := range probes {
		if codes[i] != http.StatusServiceUnavailable || bodies[i] != "database: unreachable\n" {
			t.Fatalf("probe %d: %d %q, want 503 \"database: unreachable\" without the error's text", i, codes[i], bodies[i])
		}
	}
}

// Against the real pool: a flood of probes takes about one pool connection
// per readyFresh, not two per probe, and the answer names the failed check
// without the database's error text (which names the table and the role).
func TestReadyzFloodBarelyTouchesThePool(t *testing.T) {
	t.Parallel()
	db := relaytest.NewDB(t)
	ctx := context.Background()
	brokers := relaytest.NewCluster(t, 1, "t").ListenAddrs()
	client := relaytest.NewProducer(t, brokers)
	h := healthHandler(newReadiness(db.Pool, client, func() error { return nil }, slog.New(slog.DiscardHandler)), http.NotFoundHandler())
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func() (int, string) {
		resp, err := http.Get(srv.URL + "/readyz")
		if err != nil {
			t.Error(err)
			return 0, ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != http.StatusOK {
		t.Fatalf("/readyz: %d %q, want 200", code, body)
	}

	before := db.Pool.Stat().AcquireCount()
	start := time.Now()
	const probes = 200
	var wg sync.WaitGroup
	for range probes {
		wg.Go(func() {
			if code, body := get(); code != http.StatusOK {
				t.Errorf("/readyz: %d %q, want 200", code, body)
			}
		})
	}
	wg.Wait()
	acquired := db.Pool.Stat().AcquireCount() - before
	if most := int64(time.Since(start)/readyFresh) + 1; acquired > most {
		t.Errorf("%d probes in %v took %d pool connections, want at most %d (one per %v)", probes, time.Since(start).Round(time.Millisecond), acquired, most, readyFresh)
	}

	// A schema behind the binary: the answer says so in fixed words.
	if _, err := db.Pool.Exec(ctx, `ALTER TABLE goose_db_version RENAME TO goose_db_version_away`); err != nil {
		t.Fatal(err)
	}
	relaytest.WaitFor(t, 10*time.Second, "/readyz to see the schema", func() bool {
		code, body := get()
		if code == http.StatusOK {
			return false
		}
		if body != "migrations: the schema is not migrated or not readable\n" {
			t.Fatalf("/readyz with the schema not migrated: %d %q", code, body)
		}
		return true
	})
	if err := relay.CheckSchema(ctx, db.Pool); err == nil || !strings.Contains(err.Error(), "migrate") {
		t.Errorf("CheckSchema: %v", err) // the detail the log gets
	}
}
