package agenttest_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/dhcp"
	"github.com/lpmos/lpmos/internal/netns"
)

// The agent binary brings its boot NIC up on its own, as it must in the
// initramfs: in a namespace that has only an unconfigured veth, with our
// DHCP server (full mode) on the other end, `agent --netup-only` gets an
// address, a default route and reports them.
func TestAgentBringsNetworkUp(t *testing.T) {
	if testing.Short() {
		t.Skip("network namespaces (root); not in -short mode")
	}
	netns.Require(t)
	bin := filepath.Join(t.TempDir(), "agent")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/lpmos/lpmos/examples/agent").CombinedOutput()
	require.NoError(t, err, "%s", out)

	srv, cli := netns.New(t), netns.New(t)
	srvIf, cliIf := netns.Veth(t, srv, "10.78.0.1/24", cli, "")
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x78, 0x00, 0x10}
	cli.SetMAC(t, cliIf, mac)

	cfg := dhcp.Config{Interface: srvIf, Mode: dhcp.ModeFull, Pool: dhcp.Pool{
		Start: net.IPv4(10, 78, 0, 100), End: net.IPv4(10, 78, 0, 110), Router: net.IPv4(10, 78, 0, 1),
	}}
	var s *dhcp.Server
	require.NoError(t, srv.Do(func() error {
		var err error
		if cfg.Conn, err = dhcp.ListenPacket(context.Background(), srvIf, 67); err != nil {
			return err
		}
		s, err = dhcp.New(cfg)
		return err
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()
	<-s.Ready()

	// The agent's DHCP client writes /etc/resolv.conf: in the namespace's
	// own copy (see netns.New), never the host's.
	hostResolv, err := os.ReadFile("/etc/resolv.conf")
	require.NoError(t, err)
	defer func() {
		after, err := os.ReadFile("/etc/resolv.conf")
		require.NoError(t, err)
		assert.Equal(t, string(hostResolv), string(after), "the host's /etc/resolv.conf changed")
	}()

	rctx, rcancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer rcancel()
	got, err := cli.Run(rctx, bin, "--netup-only", "--mac", mac.String(), "--region", "http://10.78.0.1:8081",
		"--task", "00000000-0000-4000-8000-000000000001", "--token", strings.Repeat("ab", 16))
	require.NoError(t, err, "%s", got)
	assert.Contains(t, got, "network up: interface="+cliIf)
	assert.Contains(t, got, "address=10.78.0.10")
	assert.Contains(t, got, "gateway=10.78.0.1")

	addrs := cli.MustRun(t, "ip", "-4", "addr", "show", "dev", cliIf)
	assert.Contains(t, addrs, "inet 10.78.0.10")
	routes := cli.MustRun(t, "ip", "-4", "route")
	assert.Contains(t, routes, "default via 10.78.0.1")
}

// The agent's DHCP client against another server, dnsmasq, which also
// hands out classless static routes (option 121, which then replace the
// router option, RFC 3442), name servers and a search list: the routes go
// into the table and the DNS settings into the namespace's resolv.conf.
func TestAgentNetworkUpFromDnsmasq(t *testing.T) {
	if testing.Short() {
		t.Skip("network namespaces (root) and dnsmasq; not in -short mode")
	}
	netns.Require(t)
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Fatalf("dnsmasq is not installed (Debian package dnsmasq-base): %v", err)
	}
	bin := filepath.Join(t.TempDir(), "agent")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/lpmos/lpmos/examples/agent").CombinedOutput()
	require.NoError(t, err, "%s", out)

	srv, cli := netns.New(t), netns.New(t)
	srvIf, cliIf := netns.Veth(t, srv, "10.79.0.1/24", cli, "")
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x79, 0x00, 0x10}
	cli.SetMAC(t, cliIf, mac)
	dir := t.TempDir()
	dnsmasq, err := srv.Start(context.Background(), "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--bind-interfaces", "--interface="+srvIf, "--dhcp-range=10.79.0.100,10.79.0.150,255.255.255.0,1h",
		"--dhcp-authoritative", "--no-ping", "--user=root", "--log-dhcp",
		"--dhcp-option=121,10.9.0.0/16,10.79.0.9,0.0.0.0/0,10.79.0.254",
		"--dhcp-option=6,10.79.0.53", "--dhcp-option=119,dc1.example", "--dhcp-option=15,dc1.example",
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"), "--pid-file="+filepath.Join(dir, "dnsmasq.pid"))
	require.NoError(t, err)
	require.True(t, netns.WaitFor(5*time.Second, func() bool {
		return strings.Contains(dnsmasq.Output(), "DHCP, IP range")
	}), "dnsmasq did not start:\n%s", dnsmasq.Output())

	rctx, rcancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer rcancel()
	got, err := cli.Run(rctx, bin, "--netup-only", "--mac", mac.String(), "--region", "http://10.79.0.1:8081",
		"--task", "00000000-0000-4000-8000-000000000001", "--token", strings.Repeat("ab", 16))
	require.NoError(t, err, "%s\ndnsmasq:\n%s", got, dnsmasq.Output())
	assert.Contains(t, got, "network up: interface="+cliIf)
	assert.Contains(t, got, "address=10.79.0.1")
	assert.Contains(t, got, "gateway=10.79.0.254")

	addrs := cli.MustRun(t, "ip", "-4", "addr", "show", "dev", cliIf)
	assert.Regexp(t, `inet 10\.79\.0\.1\d\d/24 brd 10\.79\.0\.255`, addrs)
	routes := cli.MustRun(t, "ip", "-4", "route")
	assert.Contains(t, routes, "default via 10.79.0.254")
	assert.Contains(t, routes, "10.9.0.0/16 via 10.79.0.9")
	resolv := cli.MustRun(t, "cat", "/etc/resolv.conf")
	assert.Contains(t, resolv, "nameserver 10.79.0.53")
	assert.Contains(t, resolv, "search dc1.example")
}
