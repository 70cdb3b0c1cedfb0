package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestHealthcheck(t *testing.T) {
	t.Parallel()
	var ready atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/livez":
			w.Write([]byte("ok\n"))
		case r.URL.Path == "/readyz" && ready.Load():
			w.Write([]byte("ok\n"))
		default:
			http.Error(w, "kafka: no brokers", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	env := map[string]string{"RELAY_HTTP_ADDR": strings.TrimPrefix(srv.URL, "http://")}

	if _, _, err := runCLI(t, env, "healthcheck"); exitCode(err) != 1 || !strings.Contains(err.Error(), "kafka: no brokers") {
		t.Errorf("healthcheck while not ready: %v (exit %d), want exit 1 with the reason", err, exitCode(err))
	}
	if out, _, err := runCLI(t, env, "healthcheck", "--live"); err != nil || out != "ok\n" {
		t.Errorf("healthcheck --live: %q, %v; want ok", out, err)
	}
	ready.Store(true)
	if _, _, err := runCLI(t, env, "healthcheck"); err != nil {
		t.Errorf("healthcheck when ready: %v", err)
	}
	if _, _, err := runCLI(t, map[string]string{"RELAY_HTTP_ADDR": closedPort(t)}, "healthcheck"); exitCode(err) != 1 {
		t.Errorf("healthcheck with nothing listening: exit %d, want 1", exitCode(err))
	}
	if _, _, err := runCLI(t, map[string]string{"RELAY_HTTP_ADDR": "off"}, "healthcheck"); exitCode(err) != 2 {
		t.Errorf("healthcheck with RELAY_HTTP_ADDR=off: exit %d, want 2", exitCode(err))
	}
}
