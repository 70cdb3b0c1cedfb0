package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/internal/console"
)

// startConsole serves the web console on RELAY_CONSOLE_ADDR, if set, in g.
// stop shuts it down. With one outbox the console is at the root; with
// several, each outbox's is under /<schema>/, with a selector in the
// header, and / leads to the first.
func (d *daemon) startConsole(ctx context.Context, g *errgroup.Group, outboxes []*outbox) (stop func(), err error) {
	if d.cfg.ConsoleAddr == "" {
		return func() {}, nil
	}
	log := d.logger.With("component", "console")
	var links []console.Outbox
	if len(outboxes) > 1 {
		for _, o := range outboxes {
			links = append(links, console.Outbox{Name: o.schema, Base: "/" + o.schema})
		}
	}
	mux := http.NewServeMux()
	for _, o := range outboxes {
		cfg := console.Config{Pool: o.pool, AdminToken: d.cfg.AdminToken, Logger: log.With("outbox", o.schema), LastVerify: o.lastVerify}
		if len(outboxes) > 1 {
			cfg.Base, cfg.Outbox, cfg.Outboxes = "/"+o.schema, o.schema, links
		}
		c, err := console.New(cfg)
		if err != nil {
			return nil, err
		}
		if cfg.Base == "" {
			mux.Handle("/", c.Handler())
			continue
		}
		mux.Handle(cfg.Base+"/", http.StripPrefix(cfg.Base, c.Handler()))
	}
	if len(outboxes) > 1 {
		mux.Handle("GET /{$}", http.RedirectHandler(links[0].Base+"/", http.StatusSeeOther))
	}
	ln, err := net.Listen("tcp", d.cfg.ConsoleAddr)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("console_listening", "addr", ln.Addr().String(), "actions", d.cfg.AdminToken != "")
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("console: %w", err)
		}
		return nil
	})
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), httpShutdownTimeout)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}
