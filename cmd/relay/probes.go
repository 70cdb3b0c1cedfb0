package main

import (
	"fmt"
	"net/http"
	"sync/atomic"
)

// probeHandler serves the HTTP endpoints of the daemon. Until the relay is
// wired it answers /livez, /metrics and a /readyz that says what the start
// waits for; then the full health handler takes over.
type probeHandler struct {
	h atomic.Pointer[http.Handler]
}

func (p *probeHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*p.h.Load()).ServeHTTP(w, r)
}

// starting serves the probes of a relay still starting: not ready, because
// of reason.
func (p *probeHandler) starting(reason string, metrics http.Handler) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "starting: "+reason)
	})
	p.ready(mux)
}

// ready switches to h.
func (p *probeHandler) ready(h http.Handler) {
	p.h.Store(&h)
}
