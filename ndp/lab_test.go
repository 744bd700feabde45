package ndp

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/ipv6"

	"github.com/lpmos/lpmos/internal/netns"
)

// These tests run the responder and real clients in network namespaces.
// They need root and rdisc6 (Debian package ndisc6); they skip only under
// -short.

type lab struct {
	srv, cli     *netns.NS
	srvIf, cliIf string
}

// newLab joins a server and a client namespace with a veth pair. Duplicate
// address detection is off so both link-local addresses are usable at once
// (a real interface has them ~1 s after it comes up).
func newLab(t *testing.T) *lab {
	t.Helper()
	if testing.Short() {
		t.Skip("runs IPv6 router discovery in network namespaces (root); not in -short mode")
	}
	netns.Require(t)
	l := &lab{srv: netns.New(t), cli: netns.New(t)}
	for _, ns := range []*netns.NS{l.srv, l.cli} {
		ns.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	l.srvIf, l.cliIf = netns.Veth(t, l.srv, "", l.cli, "")
	l.cli.SetMAC(t, l.cliIf, testMAC)
	for _, ns := range []*netns.NS{l.srv, l.cli} {
		ns := ns
		if !netns.WaitFor(10*time.Second, func() bool {
			out, _ := ns.Run(context.Background(), "ip", "-6", "-o", "addr", "show", "scope", "link")
			return strings.Contains(out, "fe80::") && !strings.Contains(out, "tentative")
		}) {
			t.Fatalf("no usable link-local address in %s", ns)
		}
	}
	return l
}

// serve runs a Server on the lab's server interface until the test ends
// and returns it once it answers.
func (l *lab) serve(t *testing.T, cfg Config) *Server {
	t.Helper()
	var conn *Conn
	require.NoError(t, l.srv.Do(func() (err error) {
		conn, err = Listen(context.Background(), l.srvIf)
		return err
	}))
	cfg.Conn = conn
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err, "Serve after its context ended")
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return within 10 s of its context ending")
		}
	})
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}
	return s
}

// rdisc6 (ndisc6), an independent implementation of router discovery,
// solicits and prints the advertisement it gets: ours says "no DHCPv6,
// not a router, no prefix", and comes from our link-local address.
func TestRdisc6GetsTheAdvertisement(t *testing.T) {
	l := newLab(t)
	if _, err := exec.LookPath("rdisc6"); err != nil {
		t.Fatal("rdisc6 is not installed: run ./scripts/test.sh (see README.md), which installs Debian package ndisc6")
	}
	s := l.serve(t, Config{Unsolicited: -1}) // so the one RA is the answer

	// -1: stop at the first RA; -r 3 -w 1000: three solicitations, 1 s apart.
	out, err := l.cli.Run(context.Background(), "rdisc6", "-1", "-r", "3", "-w", "1000", l.cliIf)
	require.NoError(t, err, out)
	for _, re := range []string{
		`Stateful address conf\.\s*:\s*No`,
		`Stateful other conf\.\s*:\s*No`,
		`Router lifetime\s*:\s*0 \(`,
		`Source link-layer address:\s*` + regexp.QuoteMeta(strings.ToUpper(l.srvMAC(t).String())),
		`from fe80::`,
	} {
		assert.Regexp(t, re, out)
	}
	assert.NotContains(t, out, "Prefix", "the RA must carry no prefix")
	assert.GreaterOrEqual(t, s.Stats().Solicitations, uint64(1))
	assert.True(t, netns.WaitFor(10*time.Second, func() bool { return s.Stats().Advertisements >= 1 }))
	assert.Zero(t, s.Stats().Ignored)

	// The client's kernel, which accepts RAs, took no address and no
	// default route from it.
	assert.Empty(t, strings.TrimSpace(l.cli.MustRun(t, "ip", "-6", "route", "show", "default")))
	assert.Empty(t, strings.TrimSpace(l.cli.MustRun(t, "ip", "-6", "-o", "addr", "show", "scope", "global")))
}

func (l *lab) srvMAC(t *testing.T) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	require.NoError(t, l.srv.Do(func() error {
		ifi, err := net.InterfaceByName(l.srvIf)
		if err == nil {
			mac = ifi.HardwareAddr
		}
		return err
	}))
	return mac
}

// rsClient is a raw ICMPv6 socket in the client namespace that sends
// hand-made solicitations and reads the advertisements.
type rsClient struct {
	pc  *ipv6.PacketConn
	ifi *net.Interface
}

func newRSClient(t *testing.T, l *lab) *rsClient {
	t.Helper()
	c := &rsClient{}
	require.NoError(t, l.cli.Do(func() error {
		ifi, err := net.InterfaceByName(l.cliIf)
		if err != nil {
			return err
		}
		conn, err := net.ListenPacket("ip6:ipv6-icmp", "::")
		if err != nil {
			return err
		}
		c.pc, c.ifi = ipv6.NewPacketConn(conn), ifi
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeRouterAdvertisement)
		if err := c.pc.SetICMPFilter(&f); err != nil {
			return err
		}
		return c.pc.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagSrc, true)
	}))
	t.Cleanup(func() { c.pc.Close() })
	return c
}

func (c *rsClient) send(t *testing.T, b []byte, hop int) {
	t.Helper()
	cm := &ipv6.ControlMessage{HopLimit: hop, IfIndex: c.ifi.Index}
	_, err := c.pc.WriteTo(b, cm, &net.IPAddr{IP: allRouters, Zone: c.ifi.Name})
	require.NoError(t, err)
}

// read returns the next RA, its source and hop limit, or an error once
// timeout passes.
func (c *rsClient) read(timeout time.Duration) ([]byte, net.IP, int, error) {
	buf := make([]byte, 1500)
	_ = c.pc.SetReadDeadline(time.Now().Add(timeout))
	n, cm, src, err := c.pc.ReadFrom(buf)
	if err != nil {
		return nil, nil, 0, err
	}
	return buf[:n], src.(*net.IPAddr).IP, cm.HopLimit, nil
}

// Malformed solicitations are counted and not answered; a good one is,
// with an RA that passes the checks a host applies (RFC 4861 §6.1.2: hop
// limit 255, link-local source).
func TestMalformedIgnoredGoodAnswered(t *testing.T) {
	l := newLab(t)
	s := l.serve(t, Config{Unsolicited: -1})
	c := newRSClient(t, l)

	bad := []struct {
		b   []byte
		hop int
	}{
		{ipxeRS, 64}, // crossed a router
		{append(append([]byte{}, ipxeRS[:8]...), 1, 0, 0, 0, 0, 0, 0, 0), 255}, // zero-length option
		{append([]byte{133, 7}, ipxeRS[2:]...), 255},                           // code 7
		{ipxeRS[:6], 255}, // short
	}
	for _, p := range bad {
		c.send(t, p.b, p.hop)
	}
	require.True(t, netns.WaitFor(10*time.Second, func() bool { return s.Stats().Ignored == uint64(len(bad)) }),
		"ignored %d of %d malformed solicitations", s.Stats().Ignored, len(bad))
	_, _, _, err := c.read(300 * time.Millisecond)
	var nerr net.Error
	require.True(t, errors.As(err, &nerr) && nerr.Timeout(), "a malformed solicitation was answered (%v)", err)
	assert.Zero(t, s.Stats().Solicitations)

	c.send(t, ipxeRS, 255)
	ra, src, hop, err := c.read(10 * time.Second)
	require.NoError(t, err)
	assert.Equal(t, RouterAdvertisement(l.srvMAC(t))[4:], ra[4:], "the RA (checksum aside)")
	assert.NotZero(t, ra[2:4], "the kernel filled in the checksum")
	assert.True(t, src.IsLinkLocalUnicast(), "source %s", src)
	assert.Equal(t, 255, hop)
	assert.True(t, netns.WaitFor(10*time.Second, func() bool { return s.Stats().Advertisements == 1 }))
	assert.Equal(t, uint64(1), s.Stats().Solicitations)
}

// A burst of solicitations is answered by few RAs, not one each; every
// soliciting client hears one after it asked.
func TestBurstCoalesced(t *testing.T) {
	l := newLab(t)
	s := l.serve(t, Config{Unsolicited: -1, MinInterval: 200 * time.Millisecond})
	c := newRSClient(t, l)
	const n = 50
	for range n {
		c.send(t, ipxeRS, 255)
	}
	_, _, _, err := c.read(10 * time.Second)
	require.NoError(t, err)
	require.True(t, netns.WaitFor(10*time.Second, func() bool { return s.Stats().Solicitations == n }))
	// Drain what was sent for the burst: at most an RA per MinInterval.
	for {
		if _, _, _, err := c.read(500 * time.Millisecond); err != nil {
			break
		}
	}
	assert.Less(t, s.Stats().Advertisements, uint64(n/2), "%d RAs for %d solicitations", s.Stats().Advertisements, n)
}

// The unsolicited RAs go out when the server starts; a host hears them
// without asking.
func TestUnsolicited(t *testing.T) {
	l := newLab(t)
	c := newRSClient(t, l)
	s := l.serve(t, Config{Unsolicited: 2, UnsolicitedInterval: 100 * time.Millisecond})
	for i := range 2 {
		_, _, _, err := c.read(10 * time.Second)
		require.NoError(t, err, "unsolicited RA %d", i+1)
	}
	assert.True(t, netns.WaitFor(10*time.Second, func() bool { return s.Stats().Advertisements == 2 }),
		"advertisements: %d, want 2", s.Stats().Advertisements)
	assert.Zero(t, s.Stats().Solicitations)
}

// Without IPv6 on the interface there is nothing to answer from: Listen
// says so instead of running deaf.
func TestListenWithoutIPv6(t *testing.T) {
	l := newLab(t)
	l.srv.MustRun(t, "sysctl", "-qw", "net.ipv6.conf."+l.srvIf+".disable_ipv6=1")
	err := l.srv.Do(func() error {
		c, err := Listen(context.Background(), l.srvIf)
		if err == nil {
			c.Close()
		}
		return err
	})
	require.Error(t, err)
	assert.Contains(t, err.Error(), l.srvIf)

	err = l.srv.Do(func() error {
		_, err := Listen(context.Background(), "nosuch0")
		return err
	})
	require.Error(t, err)
}

// A socket that fails under the server (here: closed by someone else) ends
// Serve with an error rather than leaving it deaf; ending its context ends
// it with nil (the other tests' cleanup checks that).
func TestServeReportsASocketFailure(t *testing.T) {
	l := newLab(t)
	var conn *Conn
	require.NoError(t, l.srv.Do(func() (err error) {
		conn, err = Listen(context.Background(), l.srvIf)
		return err
	}))
	s, err := New(Config{Conn: conn, Unsolicited: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- s.Serve(context.Background()) }()
	<-s.Ready()
	require.NoError(t, conn.Close())
	select {
	case err := <-done:
		require.Error(t, err)
		assert.Contains(t, err.Error(), l.srvIf)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its socket was closed")
	}
	assert.ErrorContains(t, s.Serve(context.Background()), "twice")
}
