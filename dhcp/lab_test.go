package dhcp

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/internal/netns"
)

// This file has the helpers of the tests that run real clients and servers
// in network namespaces. They need root (CI runs as root) and skip only
// under -short.

// lab is a server namespace and a client namespace joined by a veth pair:
// the server has 10.77.0.1/24, the client no address and testMAC.
type lab struct {
	srv, cli     *netns.NS
	srvIf, cliIf string
}

func requireLab(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs real DHCP clients in network namespaces (root); not in -short mode")
	}
	netns.Require(t)
}

func newLab(t *testing.T) *lab {
	t.Helper()
	requireLab(t)
	l := &lab{srv: netns.New(t), cli: netns.New(t)}
	l.srvIf, l.cliIf = netns.Veth(t, l.srv, "10.77.0.1/24", l.cli, "")
	l.cli.SetMAC(t, l.cliIf, testMAC.HardwareAddr())
	return l
}

// config is testConfig for the lab's server interface.
func (l *lab) config() Config {
	cfg := testConfig()
	cfg.Interface = l.srvIf
	cfg.ServerIP = nil // from the interface
	cfg.Pool.Netmask = nil
	return cfg
}

// runningServer is a Server serving inside a namespace.
type runningServer struct {
	*Server
	cancel context.CancelFunc
	done   chan error
}

// stop stops the server and returns what Serve returned.
func (r *runningServer) stop() error {
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup's stop
		return err
	case <-time.After(10 * time.Second):
		return errors.New("Serve did not return within 10 s of its context ending")
	}
}

// listenAgain is ListenPacket for a port a server in this process has just
// released. It retries for a few seconds on EADDRINUSE only: the other
// tests of the package fork processes all the time, and a child between
// fork and exec holds a copy of every descriptor of this process (close-on-
// exec only closes it at exec), so a socket closed in that window keeps its
// port for a moment. Any other error, or a port still taken after 5 s, is
// returned.
func listenAgain(iface string, port int) (net.PacketConn, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := ListenPacket(context.Background(), iface, port)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return conn, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serve builds cfg inside ns (the interface and its address are only
// visible there), opens the sockets there and serves from this process.
func serve(t *testing.T, ns *netns.NS, cfg Config) *runningServer {
	t.Helper()
	var s *Server
	require.NoError(t, ns.Do(func() error {
		var err error
		if cfg.Conn, err = listenAgain(cfg.Interface, ServerPort); err != nil {
			return err
		}
		if cfg.Mode == ModeProxy {
			if cfg.ProxyConn, err = listenAgain(cfg.Interface, ProxyPort); err != nil {
				return err
			}
		}
		s, err = New(cfg)
		return err
	}))
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningServer{Server: s, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	select {
	case <-s.Ready():
	case err := <-r.done:
		t.Fatalf("Serve: %v", err)
	}
	return r
}

// testClient is a minimal DHCP client over a UDP socket on port 68, bound
// to an interface of a namespace: it sees every reply on the link, which
// is what the ProxyDHCP and relay tests need.
type testClient struct {
	t    *testing.T
	conn net.PacketConn
}

func newTestClient(t *testing.T, ns *netns.NS, iface string, port int) *testClient {
	t.Helper()
	var conn net.PacketConn
	require.NoError(t, ns.Do(func() (err error) {
		conn, err = ListenPacket(context.Background(), iface, port)
		return err
	}))
	t.Cleanup(func() { conn.Close() })
	return &testClient{t: t, conn: conn}
}

// bindClient is a client on a socket bound to one address (a relay agent).
func bindClient(t *testing.T, ns *netns.NS, addr string) *testClient {
	t.Helper()
	conn, err := ns.ListenPacket("udp4", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return &testClient{t: t, conn: conn}
}

var bcastServer = &net.UDPAddr{IP: net.IPv4bcast, Port: ServerPort}

func (c *testClient) send(p *dhcpv4.DHCPv4, dst *net.UDPAddr) {
	c.t.Helper()
	_, err := c.conn.WriteTo(p.ToBytes(), dst)
	require.NoError(c.t, err)
}

// reply is a received answer and who sent it.
type reply struct {
	*dhcpv4.DHCPv4
	from *net.UDPAddr
}

// collect gathers the replies to xid that arrive within d.
func (c *testClient) collect(xid dhcpv4.TransactionID, d time.Duration) []reply {
	var out []reply
	deadline := time.Now().Add(d)
	buf := make([]byte, 2048)
	for {
		_ = c.conn.SetReadDeadline(deadline)
		n, from, err := c.conn.ReadFrom(buf)
		if err != nil {
			return out
		}
		p, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || p.OpCode != dhcpv4.OpcodeBootReply || p.TransactionID != xid {
			continue
		}
		out = append(out, reply{p, from.(*net.UDPAddr)})
	}
}

// exchange sends p (again every 300 ms, as clients retry) until a reply to
// it arrives, and returns that reply; it fails the test after 5 s.
func (c *testClient) exchange(p *dhcpv4.DHCPv4, dst *net.UDPAddr) reply {
	c.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		c.send(p, dst)
		if rs := c.collect(p.TransactionID, 300*time.Millisecond); len(rs) > 0 {
			return rs[0]
		}
	}
	c.t.Fatalf("no reply to %s xid %s", p.MessageType(), p.TransactionID)
	return reply{}
}

// dora runs DISCOVER, REQUEST with the broadcast flag and returns the ACK.
func (c *testClient) dora(dst *net.UDPAddr, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	c.t.Helper()
	mods = append([]dhcpv4.Modifier{dhcpv4.WithBroadcast(true)}, mods...)
	offer := c.exchange(clientPacket(dhcpv4.MessageTypeDiscover, mods...), dst)
	require.Equal(c.t, dhcpv4.MessageTypeOffer, offer.MessageType())
	req := clientPacket(dhcpv4.MessageTypeRequest, append(mods, withRequested(offer.YourIPAddr),
		withServerID(offer.ServerIdentifier()))...)
	ack := c.exchange(req, dst)
	return ack.DHCPv4
}

// readEnv parses KEY=VALUE lines (udhcpc's script environment).
func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	env := make(map[string]string)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return env
}

// writeScript writes an executable shell script.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755))
	return path
}
