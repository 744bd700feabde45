package dhcp

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/internal/netns"
)

// TestProxyDHCPBesideDnsmasq puts three hosts on one bridge: dnsmasq as the
// site's DHCP server, this server in proxy mode, and a PXE client that
// collects every offer. The client must get its address from dnsmasq and
// its boot file from us, then fetch the boot file again from port 4011.
func TestProxyDHCPBesideDnsmasq(t *testing.T) {
	requireLab(t)
	t.Parallel()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Fatalf("dnsmasq is not installed (Debian package dnsmasq-base); ./scripts/test.sh installs it: %v", err)
	}
	br := netns.NewBridge(t)
	site, proxyNS, cli := netns.New(t), netns.New(t), netns.New(t)
	siteIf := br.Attach(t, site, "10.66.0.1/24")
	proxyIf := br.Attach(t, proxyNS, "10.66.0.2/24")
	cliIf := br.Attach(t, cli, "")
	cli.SetMAC(t, cliIf, testMAC.HardwareAddr())

	dir := t.TempDir()
	dnsmasq, err := site.Start(context.Background(), "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--bind-interfaces", "--interface="+siteIf, "--dhcp-range=10.66.0.100,10.66.0.150,255.255.255.0,1h",
		"--dhcp-authoritative", "--no-ping", "--user=root", "--log-dhcp",
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"), "--pid-file="+filepath.Join(dir, "dnsmasq.pid"))
	require.NoError(t, err)
	require.True(t, netns.WaitFor(5*time.Second, func() bool {
		return strings.Contains(dnsmasq.Output(), "DHCP, IP range")
	}), "dnsmasq did not start:\n%s", dnsmasq.Output())

	srv := serve(t, proxyNS, Config{Interface: proxyIf, Mode: ModeProxy, Policy: testPolicy})
	c := newTestClient(t, cli, cliIf, ClientPort)

	// PXE DISCOVER: two offers, one from each server.
	mods := append([]dhcpv4.Modifier{dhcpv4.WithBroadcast(true)}, uefiPXE...)
	discover := clientPacket(dhcpv4.MessageTypeDiscover, mods...)
	var offers []reply
	require.True(t, netns.WaitFor(10*time.Second, func() bool {
		c.send(discover, bcastServer)
		offers = append(offers, c.collect(discover.TransactionID, time.Second)...)
		return len(bySender(offers)) >= 2
	}), "want offers from dnsmasq and from the proxy, got %d; dnsmasq:\n%s", len(offers), dnsmasq.Output())
	from := bySender(offers)
	site1, proxy1 := from["10.66.0.1"], from["10.66.0.2"]
	require.NotNil(t, site1)
	require.NotNil(t, proxy1)

	assert.Equal(t, dhcpv4.MessageTypeOffer, site1.MessageType())
	lease := site1.YourIPAddr.To4()
	assert.True(t, lease[3] >= 100 && lease[3] <= 150, "dnsmasq leases %v", lease)
	assert.Empty(t, site1.BootFileName)

	assert.Equal(t, dhcpv4.MessageTypeOffer, proxy1.MessageType())
	assert.True(t, proxy1.YourIPAddr.IsUnspecified(), "ProxyDHCP offers no address")
	assert.Equal(t, "PXEClient", proxy1.ClassIdentifier())
	assert.Equal(t, []byte{6, 1, 8, 0xff}, proxy1.Options.Get(dhcpv4.OptionVendorSpecificInformation))
	assert.Equal(t, "snponly.efi", proxy1.BootFileName)
	assert.Equal(t, net.IPv4(10, 66, 0, 2).To4(), proxy1.ServerIPAddr.To4())
	assert.Equal(t, testUUID, proxy1.Options.Get(dhcpv4.OptionClientMachineIdentifier))

	// The client takes dnsmasq's address...
	req := clientPacket(dhcpv4.MessageTypeRequest, append(mods, withRequested(lease), withServerID(net.IPv4(10, 66, 0, 1)))...)
	ack := c.exchange(req, bcastServer)
	require.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType())
	require.Equal(t, "10.66.0.1", ack.from.IP.String(), "the proxy does not answer a REQUEST meant for the DHCP server")
	cli.AddAddr(t, cliIf, lease.String()+"/24")

	// ... and, like iPXE or a BIOS PXE ROM, asks the proxy on port 4011.
	pxeReq := clientPacket(dhcpv4.MessageTypeRequest, append(uefiPXE, dhcpv4.WithClientIP(lease))...)
	pxeAck := c.exchange(pxeReq, &net.UDPAddr{IP: net.IPv4(10, 66, 0, 2), Port: ProxyPort})
	assert.Equal(t, dhcpv4.MessageTypeAck, pxeAck.MessageType())
	assert.Equal(t, ProxyPort, pxeAck.from.Port, "answered from port 4011")
	assert.Equal(t, "snponly.efi", pxeAck.BootFileName)
	assert.True(t, pxeAck.YourIPAddr.IsUnspecified())

	// A client that is not booting from the network hears only dnsmasq.
	plainDiscover := clientPacket(dhcpv4.MessageTypeDiscover, withMAC(testMAC2), withXID(0xabcdef), dhcpv4.WithBroadcast(true))
	var plainOffers []reply
	require.True(t, netns.WaitFor(10*time.Second, func() bool {
		c.send(plainDiscover, bcastServer)
		plainOffers = append(plainOffers, c.collect(plainDiscover.TransactionID, time.Second)...)
		return len(plainOffers) > 0
	}))
	for _, o := range plainOffers {
		assert.Equal(t, "10.66.0.1", o.from.IP.String())
	}
	st := srv.Stats()
	assert.NotZero(t, st.Offers)
	assert.EqualValues(t, 1, st.Acks)
	assert.NotZero(t, st.Ignored)
}

func bySender(rs []reply) map[string]*reply {
	m := make(map[string]*reply)
	for i := range rs {
		m[rs[i].from.IP.String()] = &rs[i]
	}
	return m
}

// TestRelays acts as two relay agents for one remote subnet: answers go
// unicast to giaddr:67, come from the relay subnet's pool, echo option 82,
// and a request duplicated through both relays gets the same address.
func TestRelays(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	l.cli.AddAddr(t, l.cliIf, "10.77.0.2/24") // the relays' uplink
	l.cli.AddAddr(t, l.cliIf, "10.88.0.2/24")
	l.cli.AddAddr(t, l.cliIf, "10.88.0.3/24")
	l.srv.MustRun(t, "ip", "route", "add", "10.88.0.0/24", "dev", l.srvIf)
	srv := serve(t, l.srv, l.config())
	server := &net.UDPAddr{IP: net.IPv4(10, 77, 0, 1), Port: ServerPort}
	// Sockets bound to one address do not receive broadcasts, so a
	// reply here proves it was unicast to the relay.
	r1 := bindClient(t, l.cli, "10.88.0.2:67")
	r2 := bindClient(t, l.cli, "10.88.0.3:67")

	option82 := func(p *dhcpv4.DHCPv4) []byte { return p.Options.Get(dhcpv4.OptionRelayAgentInformation) }
	d1 := clientPacket(dhcpv4.MessageTypeDiscover, append(uefiPXE, withMAC(testMAC2), withRelay(net.IPv4(10, 88, 0, 2), "swp7", "leaf1"))...)
	d2 := clientPacket(dhcpv4.MessageTypeDiscover, append(uefiPXE, withMAC(testMAC2), withRelay(net.IPv4(10, 88, 0, 3), "swp7", "leaf2"))...)
	o1 := r1.exchange(d1, server)
	o2 := r2.exchange(d2, server)
	for _, o := range []reply{o1, o2} {
		assert.Equal(t, dhcpv4.MessageTypeOffer, o.MessageType())
		assert.Equal(t, "10.77.0.1", o.from.IP.String())
		assert.Equal(t, ServerPort, o.from.Port)
		assert.Equal(t, "snponly.efi", o.BootFileName)
		assert.Equal(t, net.IPv4(10, 88, 0, 1).To4(), o.Router()[0].To4(), "the relay subnet's router")
	}
	assert.Equal(t, net.IPv4(10, 88, 0, 100).To4(), o1.YourIPAddr.To4(), "address from the relay subnet's pool")
	assert.Equal(t, o1.YourIPAddr, o2.YourIPAddr, "same answer through both relays")
	assert.Equal(t, option82(d1), option82(o1.DHCPv4), "option 82 echoed unchanged")
	assert.Equal(t, option82(d2), option82(o2.DHCPv4))

	req := clientPacket(dhcpv4.MessageTypeRequest, append(uefiPXE, withMAC(testMAC2), withRelay(net.IPv4(10, 88, 0, 3), "swp7", "leaf2"),
		withRequested(o1.YourIPAddr), withServerID(net.IPv4(10, 77, 0, 1)))...)
	ack := r2.exchange(req, server)
	assert.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType())
	assert.Equal(t, o1.YourIPAddr, ack.YourIPAddr)

	// A relay on a subnet without a pool gets nothing.
	before := srv.Stats().NoPool
	r1.send(clientPacket(dhcpv4.MessageTypeDiscover, withRelay(net.IPv4(10, 99, 0, 1), "x", "y")), server)
	assert.Empty(t, r1.collect(testXID, 500*time.Millisecond))
	assert.Equal(t, before+1, srv.Stats().NoPool)
}

// TestLeasesSurviveRestart stops the server and starts a new one over the
// same lease file: machines keep their addresses, newcomers get others.
func TestLeasesSurviveRestart(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	cfg := l.config()
	cfg.LeaseFile = filepath.Join(t.TempDir(), "leases.json")
	cfg.FlushInterval = time.Hour // only the final save on shutdown writes

	c := newTestClient(t, l.cli, l.cliIf, ClientPort)
	macs := []lpmos.MAC{testMAC, testMAC2, {2, 0, 0, 0, 0, 3}}
	first := serve(t, l.srv, cfg)
	got := make(map[lpmos.MAC]string)
	for i, m := range macs[:2] {
		ack := c.dora(bcastServer, withMAC(m), withXID(uint32(100+i)))
		require.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType())
		got[m] = ack.YourIPAddr.String()
	}
	require.NoError(t, first.stop())
	b, err := os.ReadFile(cfg.LeaseFile)
	require.NoError(t, err, "the lease file is written when Serve returns")
	assert.Contains(t, string(b), got[testMAC])

	serve(t, l.srv, cfg)
	newcomer := c.dora(bcastServer, withMAC(macs[2]), withXID(200))
	assert.NotContains(t, []string{got[testMAC], got[testMAC2]}, newcomer.YourIPAddr.String())
	for i, m := range macs[:2] {
		ack := c.dora(bcastServer, withMAC(m), withXID(uint32(300+i)))
		assert.Equal(t, got[m], ack.YourIPAddr.String(), "%s keeps its address across the restart", m)
	}
	// An INIT-REBOOT REQUEST for the old address is acknowledged too.
	reboot := clientPacket(dhcpv4.MessageTypeRequest, dhcpv4.WithBroadcast(true), withXID(400), withRequested(net.ParseIP(got[testMAC])))
	assert.Equal(t, dhcpv4.MessageTypeAck, c.exchange(reboot, bcastServer).MessageType())
}

// TestBadPacketsOverTheWire sends malformed packets at the running server,
// then checks a good client is still served and every bad one was counted.
func TestBadPacketsOverTheWire(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	srv := serve(t, l.srv, l.config())
	c := newTestClient(t, l.cli, l.cliIf, ClientPort)
	pkts := malformedPackets()
	for _, b := range pkts {
		_, err := c.conn.WriteTo(b, bcastServer)
		require.NoError(t, err)
	}
	require.True(t, netns.WaitFor(5*time.Second, func() bool { return srv.Stats().Malformed == uint64(len(pkts)) }),
		"malformed: %d of %d", srv.Stats().Malformed, len(pkts))
	ack := c.dora(bcastServer, biosPXE...)
	assert.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType())
	assert.Equal(t, "undionly.kpxe", ack.BootFileName)
	assert.Zero(t, srv.Stats().Naks)
}

// TestQueueBoundsLoad makes the only worker wait on the policy and floods
// the server: packets beyond the queue are dropped and counted, none waits
// in an unbounded buffer, and the server answers again once the worker is
// free.
func TestQueueBoundsLoad(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	cfg := l.config()
	cfg.Workers, cfg.QueueSize = 1, 4
	cfg.PolicyTimeout = time.Minute
	cfg.Policy = BootPolicyFunc(func(ctx context.Context, req Request) (Decision, error) {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return testPolicy.Boot(ctx, req)
	})
	srv := serve(t, l.srv, cfg)
	c := newTestClient(t, l.cli, l.cliIf, ClientPort)
	const flood = 100
	for i := range flood {
		c.send(clientPacket(dhcpv4.MessageTypeDiscover, append(biosPXE, withXID(uint32(i)))...), bcastServer)
	}
	require.True(t, netns.WaitFor(5*time.Second, func() bool { return srv.Stats().Received == flood }))
	st := srv.Stats()
	assert.GreaterOrEqual(t, st.QueueFull, uint64(flood-1-4), "at most one in the worker and four queued")
	unblock()
	ack := c.dora(bcastServer, append(biosPXE, withXID(1000))...)
	assert.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType())
}

// TestSecondServerCannotBind checks the pitfall of insomniacslk's server4
// (SO_REUSEPORT) is avoided: a second server on the same interface and port
// fails loudly instead of silently taking half of the packets.
func TestSecondServerCannotBind(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	serve(t, l.srv, l.config())
	err := l.srv.Do(func() error {
		conn, err := ListenPacket(context.Background(), l.srvIf, ServerPort)
		if err == nil {
			conn.Close()
		}
		return err
	})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "address already in use")

	// Serve with an Interface opens the socket itself, inside the
	// namespace of the calling thread.
	err = l.srv.Do(func() error {
		s, err := New(Config{Interface: l.srvIf, Mode: ModeFull, Pool: l.config().Pool})
		if err != nil {
			return err
		}
		return s.Serve(context.Background())
	})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "address already in use")
}

// TestServeOwnsItsSockets opens the sockets itself from the interface name
// and stops cleanly: Serve returns nil and closes them.
func TestServeOwnsItsSockets(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var s *Server
	require.NoError(t, l.srv.Do(func() (err error) {
		s, err = New(Config{Interface: l.srvIf, Mode: ModeProxy, Policy: testPolicy})
		return err
	}))
	// Serve opens its sockets before it starts any goroutine, so running
	// it on a thread inside the namespace puts them there.
	go l.srv.Do(func() error {
		done <- s.Serve(ctx)
		return nil
	})
	<-s.Ready()
	c := newTestClient(t, l.cli, l.cliIf, ClientPort)
	offer := c.exchange(clientPacket(dhcpv4.MessageTypeDiscover, append(biosPXE, dhcpv4.WithBroadcast(true))...), bcastServer)
	assert.Equal(t, "undionly.kpxe", offer.BootFileName)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	// The ports are free again.
	require.NoError(t, l.srv.Do(func() error {
		for _, port := range []int{ServerPort, ProxyPort} {
			conn, err := listenAgain(l.srvIf, port)
			if err != nil {
				return fmt.Errorf("port %d: %w", port, err)
			}
			conn.Close()
		}
		return nil
	}))
	assert.Error(t, s.Serve(context.Background()), "Serve runs once")
}
