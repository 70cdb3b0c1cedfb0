package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

func healthcheckCommand() *command {
	return &command{
		name:    "healthcheck",
		summary: "probe a running relay's /readyz (or /livez), for container healthchecks",
		args:    "[--live]",
		about: `Asks the relay listening on RELAY_HTTP_ADDR (on this host) whether it is ready,
and exits 0 if it answers 200 within 3s, 1 otherwise. For images without a
shell or curl: HEALTHCHECK CMD ["/relay", "healthcheck"].`,
		flags: func(fs *flag.FlagSet, env *environment) func(context.Context, []string) error {
			live := fs.Bool("live", false, "probe /livez (the process is alive) instead of /readyz")
			return noArgs("healthcheck", func(ctx context.Context) error {
				cfg, err := loadConfig(env.getenv)
				if err != nil {
					return err
				}
				if cfg.HTTPAddr == "off" {
					return usageErrorf("healthcheck: RELAY_HTTP_ADDR is off: the relay serves no health endpoints")
				}
				path := "/readyz"
				if *live {
					path = "/livez"
				}
				return probe(ctx, localURL(cfg.HTTPAddr)+path, env.stdout)
			})
		},
	}
}

// localURL turns a listen address (":8080", "0.0.0.0:8080") into a URL this
// host can reach.
func localURL(listen string) string {
	host, port, _ := net.SplitHostPort(listen)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

func probe(ctx context.Context, url string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %d: %s", url, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	fmt.Fprintf(out, "%s", body)
	return nil
}
