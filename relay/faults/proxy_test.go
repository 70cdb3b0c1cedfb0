package faults

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	"github.com/twmb/franz-go/pkg/kfake"
)

// netFault is a TCP proxy (toxiproxy, as a library) between the relay and
// Postgres or Kafka, which a scenario cuts and heals.
type netFault struct {
	t     *testing.T
	proxy *toxiproxy.Proxy
}

// newNetFault starts a proxy on a free loopback port in front of upstream.
func newNetFault(t *testing.T, name, upstream string) (*netFault, error) {
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("proxy %s: %w", name, err)
	}
	t.Cleanup(p.Stop)
	return &netFault{t: t, proxy: p}, nil
}

// addr is where clients connect.
func (f *netFault) addr() string { return f.proxy.Listen }

// cut closes every connection through the proxy and refuses new ones.
func (f *netFault) cut() { f.proxy.Stop() }

// heal accepts connections again, on the same address.
func (f *netFault) heal() {
	f.t.Helper()
	if err := f.proxy.Start(); err != nil {
		f.t.Fatalf("heal proxy %s: %v", f.proxy.Name, err)
	}
}

// addToxic installs a toxiproxy toxic on every connection, current and new:
// typ is e.g. "timeout" or "reset_peer", stream "upstream" (to the server)
// or "downstream" (back to the client), timeoutMS its one attribute.
func (f *netFault) addToxic(name, typ, stream string, timeoutMS int) {
	f.t.Helper()
	js := fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"toxicity":1,"attributes":{"timeout":%d}}`, name, typ, stream, timeoutMS)
	if _, err := f.proxy.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
		f.t.Fatalf("add toxic %s: %v", name, err)
	}
}

func (f *netFault) removeToxic(name string) {
	f.t.Helper()
	if err := f.proxy.Toxics.RemoveToxic(context.Background(), name); err != nil {
		f.t.Fatalf("remove toxic %s: %v", name, err)
	}
}

// injectCut injects the network fault of round i (0, 1 or 2) of a proxied
// scenario, counts it in faults, and heals it after a jittered pause. The
// Kafka and Postgres scenarios cut their links in the same three ways:
//
//  0. every connection closed, new ones refused;
//  1. answers black-holed until the connection closes after 1s: the server
//     did the work (wrote the batch, committed), the client never hears;
//  2. connections reset as soon as the client sends.
func (f *netFault) injectCut(i int, faults *faultCounter) {
	f.t.Helper()
	switch i {
	case 0:
		faults.add("connections closed and refused")
		f.cut()
		pause(jitter(time.Second))
		f.heal()
	case 1:
		faults.add("answers black-holed, connection closed after 1s")
		f.addToxic("blackhole", "timeout", "downstream", 1000)
		pause(jitter(1500 * time.Millisecond))
		f.removeToxic("blackhole")
	case 2:
		faults.add("connection reset on write")
		f.addToxic("reset", "reset_peer", "upstream", 0)
		pause(jitter(time.Second))
		f.removeToxic("reset")
	default:
		f.t.Fatalf("injectCut: no network fault %d", i)
	}
}

// advertisedListener is a broker's listener that reports the proxy's
// address as its own. kfake advertises its listener's address in metadata,
// and Kafka clients connect to the advertised brokers after the seed, so
// this sends every connection of every client through the proxy, as an
// advertised.listeners setting would on a real broker.
type advertisedListener struct {
	net.Listener
	addr net.Addr
}

func (l advertisedListener) Addr() net.Addr { return l.addr }

// newProxiedCluster starts a one-broker kfake cluster behind a proxy and
// returns both; the cluster's ListenAddrs are the proxy's.
func newProxiedCluster(t *testing.T, partitions int32, topics ...string) (*kfake.Cluster, *netFault) {
	t.Helper()
	var fault *netFault
	listen := func(network, address string) (net.Listener, error) {
		ln, err := net.Listen(network, address)
		if err != nil {
			return nil, err
		}
		f, err := newNetFault(t, "kafka", ln.Addr().String())
		if err != nil {
			ln.Close()
			return nil, err
		}
		fault = f
		addr, err := net.ResolveTCPAddr("tcp", f.addr())
		if err != nil {
			ln.Close()
			return nil, err
		}
		return advertisedListener{ln, addr}, nil
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topics...), kfake.ListenFn(listen))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c, fault
}
