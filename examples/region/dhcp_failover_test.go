package main_test

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos/agent"
	"github.com/lpmos/lpmos/internal/etcdtest"
	"github.com/lpmos/lpmos/internal/netns"
	"github.com/lpmos/lpmos/internal/relay"
	"github.com/lpmos/lpmos/region"
)

// forwardInto makes target (an address in the test's own network
// namespace, e.g. the etcd member on 127.0.0.1) reachable from inside ns
// at the returned address on ns's loopback: processes in a namespace
// cannot reach the root namespace's loopback.
func forwardInto(t *testing.T, ns *netns.NS, target string) string {
	t.Helper()
	ln, err := ns.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	relay.Serve(t, ln, func() (net.Conn, error) { return net.Dial("tcp", target) })
	return ln.Addr().String()
}

// nsRegion is a region process in its own namespace on the lab bridge.
type nsRegion struct {
	name string
	ip   string
	proc *netns.Proc
	http *http.Client
}

func (r nsRegion) role() string {
	resp, err := r.http.Get("http://" + r.ip + ":8081" + agent.PathHealth)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var h agent.Health
	_ = json.NewDecoder(resp.Body).Decode(&h)
	return h.Role
}

// udhcpcLease runs busybox udhcpc once as a BIOS PXE client with mac in
// ns (on interface ifn) and returns the address it was leased and the
// server that leased it.
func udhcpcLease(t *testing.T, ns *netns.NS, ifn, mac string) (ip, server string) {
	t.Helper()
	ns.MustRun(t, "ip", "link", "set", ifn, "down")
	ns.MustRun(t, "ip", "link", "set", ifn, "address", mac)
	ns.MustRun(t, "ip", "link", "set", ifn, "up")
	dir := t.TempDir()
	env := filepath.Join(dir, "env")
	script := filepath.Join(dir, "script")
	require.NoError(t, os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && env > "+env+"\nexit 0\n"), 0o755))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := ns.Run(ctx, "busybox", "udhcpc", "-i", ifn, "-f", "-q", "-n", "-t", "8", "-T", "1", "-A", "1",
		"-x", "0x5d:0000", "-V", "PXEClient:Arch:00000:UNDI:002001", "-s", script)
	require.NoError(t, err, "udhcpc as %s:\n%s", mac, out)
	b, err := os.ReadFile(env)
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ip="); ok {
			ip = v
		}
		if v, ok := strings.CutPrefix(line, "serverid="); ok {
			server = v
		}
	}
	return ip, server
}

// TestRegionPairKeepsDHCPLeases: two processes of one region serve
// full-mode DHCP on one network, each from its own host (namespace). The
// leader leases two machines addresses; killed (-9), the standby takes
// over and gives each machine the address it had, read from the leases
// the leader kept in the store: not the first free addresses of the range,
// which a new server without them would hand out.
func TestRegionPairKeepsDHCPLeases(t *testing.T) {
	if testing.Short() {
		t.Skip("region processes and udhcpc in network namespaces: run without -short (./scripts/test.sh)")
	}
	netns.Require(t)
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Fatalf("busybox is not installed (Debian package busybox); ./scripts/test.sh installs it: %v", err)
	}
	member := etcdtest.StartMember(t)
	ctx := context.Background()
	st, err := member.Store(ctx)
	require.NoError(t, err)
	etcdAddr := strings.TrimPrefix(member.ClientURL(), "http://")

	br := netns.NewBridge(t)
	cli := netns.New(t)
	cliIf := br.Attach(t, cli, "")
	start := func(name, ip string) nsRegion {
		ns := netns.New(t)
		ifn := br.Attach(t, ns, ip+"/24")
		etcdURL := "http://" + forwardInto(t, ns, etcdAddr)
		data := t.TempDir()
		p, err := ns.Start(ctx, bin, "--etcd-endpoints", etcdURL, "--region", "dc1", "--instance-id", name,
			"--leader-ttl", "2s", "--region-listen", ip+":8081", "--region-url", "http://"+ip+":8081",
			"--tftp-listen", "", "--boot-dir", data, "--ipv6-ra=false",
			"--dhcp-iface", ifn, "--dhcp-mode", "full", "--dhcp-range", "10.78.0.100-10.78.0.150",
			"--dhcp-lease-file", filepath.Join(data, "leases.json"), "--unknown-machines", "discover")
		require.NoError(t, err)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("region %s output:\n%s", name, p.Output())
			}
		})
		client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var c net.Conn
				err := ns.Do(func() (err error) {
					var d net.Dialer
					c, err = d.DialContext(ctx, network, addr)
					return err
				})
				return c, err
			}}}
		return nsRegion{name: name, ip: ip, proc: p, http: client}
	}
	a := start("a", "10.78.0.2")
	require.Eventually(t, func() bool { return a.role() == "leader" }, 30*time.Second, 50*time.Millisecond, "a never led")
	b := start("b", "10.78.0.3")
	require.Eventually(t, func() bool { return b.role() == "standby" }, 30*time.Second, 50*time.Millisecond, "b never joined as standby")

	// The leader leases two machines the first two addresses, in order;
	// the standby answers no one.
	const first, second = "52:54:00:77:00:01", "52:54:00:77:00:02"
	ip1, srv1 := udhcpcLease(t, cli, cliIf, first)
	ip2, srv2 := udhcpcLease(t, cli, cliIf, second)
	assert.Equal(t, "10.78.0.100", ip1)
	assert.Equal(t, "10.78.0.101", ip2)
	assert.Equal(t, a.ip, srv1, "the leader leased")
	assert.Equal(t, a.ip, srv2, "the leader leased")

	// Both leases reach the store (within the flush interval) before the
	// leader dies: a lease younger than that dies with it (README).
	require.Eventually(t, func() bool {
		leases, err := region.DHCPLeases(ctx, st, "dc1")
		if err != nil {
			return false
		}
		var macs []string
		for _, l := range leases {
			macs = append(macs, l.MAC.String())
		}
		return len(macs) == 2 && strings.Contains(strings.Join(macs, " "), first) &&
			strings.Contains(strings.Join(macs, " "), second)
	}, 10*time.Second, 50*time.Millisecond, "the leases never reached the store")

	a.proc.Cmd.Process.Signal(syscall.SIGKILL)
	<-a.proc.Done()
	require.Eventually(t, func() bool { return b.role() == "leader" }, 20*time.Second, 50*time.Millisecond, "b never took over")

	// The second machine asks first: the new leader gives it its own
	// address, not the first free one.
	ip2b, srv2b := udhcpcLease(t, cli, cliIf, second)
	assert.Equal(t, b.ip, srv2b, "the new leader answers")
	assert.Equal(t, ip2, ip2b, "the second machine keeps its address across the takeover")
	ip1b, _ := udhcpcLease(t, cli, cliIf, first)
	assert.Equal(t, ip1, ip1b, "the first machine keeps its address across the takeover")
}
