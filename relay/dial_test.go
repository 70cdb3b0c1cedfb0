//go:build linux

package relay_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sys/unix"

	"github.com/outboxrelay/relay/internal/relaytest"
	"github.com/outboxrelay/relay/relay"
)

// userTimeout reads a TCP connection's TCP_USER_TIMEOUT, in ms.
func userTimeout(t *testing.T, c net.Conn) int {
	t.Helper()
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		t.Fatalf("%T is not a TCP connection", c)
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ms int
	var gerr error
	if err := raw.Control(func(fd uintptr) {
		ms, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatal(gerr)
	}
	return ms
}

// The relay's connections to Postgres give up on unacknowledged data after
// the stall bound: 2 × 10s + 5s + 2 × 1s here.
func TestConnectionsGiveUpAfterTheStallBound(t *testing.T) {
	t.Parallel()
	cfg := relay.Config{BatchTimeout: 10 * time.Second, PollInterval: time.Second}
	const want = 27_000

	poolCfg, err := relay.PoolConfig(relaytest.DatabaseURL(), "public")
	if err != nil {
		t.Fatal(err)
	}
	relay.BoundSockets(poolCfg, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if err := conn.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if got := userTimeout(t, conn.Conn().PgConn().Conn()); got != want {
		t.Errorf("Postgres connection: TCP_USER_TIMEOUT %d ms, want %d", got, want)
	}

	// A Unix socket has no such option, and still connects.
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := poolCfg.ConnConfig.DialFunc(ctx, "unix", sock)
	if err != nil {
		t.Fatalf("dial a Unix socket: %v", err)
	}
	_ = c.Close()
}
