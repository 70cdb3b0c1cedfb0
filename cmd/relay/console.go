package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/outboxrelay/relay/internal/console"
)

// startConsole serves the web console on RELAY_CONSOLE_ADDR, if set, in g.
// stop shuts it down. pv, if not nil, is the periodic verify whose latest
// result the console shows.
func (d *daemon) startConsole(ctx context.Context, g *errgroup.Group, pool *pgxpool.Pool, pv *periodicVerify) (stop func(), err error) {
	if d.cfg.ConsoleAddr == "" {
		return func() {}, nil
	}
	log := d.logger.With("component", "console")
	cfg := console.Config{Pool: pool, AdminToken: d.cfg.AdminToken, Logger: log}
	if pv != nil {
		cfg.LastVerify = pv.lastResult
	}
	c, err := console.New(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", d.cfg.ConsoleAddr)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	srv := &http.Server{
		Handler:           c.Handler(),
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
