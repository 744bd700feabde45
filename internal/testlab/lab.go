// Package testlab is the end-to-end test lab: a throwaway L2 network in two
// network namespaces, boot servers on one side and a QEMU virtual machine on
// the other, so a test can PXE-boot a VM from a real region process and
// watch it run the agent. The bridge has no STP, forward delay or multicast
// snooping so the firmware's first DHCP packets are not dropped. Like the
// networks of most users, the lab has no IPv6 router: the region's own
// router-advertisement responder (package ndp, on by default with
// --dhcp-iface) is what spares iPXE its ~16 s wait for IPv6, so the tests
// see the boot times users see. The server side has IPv6 on (a link-local
// address, usable at once: no duplicate address detection) for it.
//
//	server namespace                           VM namespace (pure L2, IPv6 off)
//	  veth 10.99.0.1/24 + fe80::/64  <--veth--> veth --+
//	  region/allinone (DHCP, TFTP, HTTP, IPv6 RA)      br0 (no STP, no forward delay, no snooping)
//	                                           tap0  --+  <- qemu-system-x86_64 -netdev tap
//
// Every namespace, process and file the lab creates is torn down by
// t.Cleanup, also when the test fails. The test process itself stays in the
// root namespace and reaches servers in the server namespace through
// [Lab.HTTPClient], whose connections are dialled from inside it.
//
// It needs root, iproute2, QEMU, the iPXE ROMs, dnsmasq (the site DHCP
// server of ProxyDHCP scenarios), rdisc6 (ndisc6) and network access
// to a Debian mirror for the agent kernel; without them a test fails (it is
// never skipped silently) with a message naming ./scripts/test.sh, except
// under -short, where [Require] skips. It is test support, not API: it must
// not be imported by non-test code.
package testlab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lpmos/lpmos/internal/netns"
)

// The lab's addresses. Every lab lives in its own namespaces, so they are
// the same in every lab and parallel labs do not collide.
const (
	// ServerIP is the server namespace's address on the VM link.
	ServerIP = "10.99.0.1"
	// ServerCIDR is ServerIP with its prefix.
	ServerCIDR = ServerIP + "/24"
	// DHCPRange is a pool on the link for full-mode DHCP, in --dhcp-range form.
	DHCPRange = "10.99.0.100-10.99.0.199"
)

// Lab is one lab network. Create it with [New].
type Lab struct {
	// Server is the namespace for the boot servers.
	Server *netns.NS
	// VM is the namespace QEMU runs in: a bridge joining the link to the
	// server namespace and the VM's tap device, no addresses.
	VM *netns.NS
	// ServerIf is the server namespace's interface on the VM link (for
	// --dhcp-iface).
	ServerIf string
	// Bridge and Tap are the VM namespace's bridge and QEMU's tap device.
	Bridge, Tap string

	t      testing.TB
	client *http.Client
}

// Require fails the test unless the lab's tools are installed and it runs
// as root; under -short it skips instead.
func Require(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end lab (network namespaces + QEMU); skipped with -short")
	}
	if err := netns.Check(); err != nil {
		t.Fatalf("testlab: %v: the end-to-end tests need root; run them with ./scripts/test.sh (see README.md)", err)
	}
	for _, bin := range []string{"ip", "qemu-system-x86_64", "dnsmasq", "rdisc6", "go", "apt-get", "dpkg"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("testlab: %s is not installed: run ./scripts/test.sh (see README.md), which installs the lab's tools (qemu-system-x86, ipxe-qemu, ipxe, ovmf, dnsmasq-base, ndisc6, iproute2)", bin)
		}
	}
	for _, f := range []string{"/dev/net/tun", "/usr/lib/ipxe/qemu/efi-virtio.rom"} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("testlab: %v: run ./scripts/test.sh (see README.md), which installs the lab's tools (Debian packages ipxe-qemu, qemu-system-x86)", err)
		}
	}
}

// New builds the lab network. No IPv6 router advertises on it. Everything
// is removed again when the test ends.
func New(t testing.TB) *Lab {
	t.Helper()
	Require(t)
	srv, vm := netns.New(t), netns.New(t)
	l := &Lab{Server: srv, VM: vm, Bridge: "br0", Tap: "tap0", t: t}

	// The link-local address must be usable at once (the region's RAs go
	// out from it), and the VM side must stay silent at L3.
	srv.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	vm.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
	srvIf, vmIf := netns.Veth(t, srv, ServerCIDR, vm, "")
	l.ServerIf = srvIf
	if !netns.WaitFor(10*time.Second, func() bool {
		out, _ := srv.Run(context.Background(), "ip", "-6", "-o", "addr", "show", "dev", srvIf, "scope", "link")
		return strings.Contains(out, "fe80::") && !strings.Contains(out, "tentative")
	}) {
		t.Fatalf("testlab: %s has no usable IPv6 link-local address", srvIf)
	}

	vm.MustRun(t, "ip", "link", "add", l.Bridge, "type", "bridge",
		"stp_state", "0", "forward_delay", "0", "mcast_snooping", "0")
	vm.MustRun(t, "ip", "tuntap", "add", "dev", l.Tap, "mode", "tap")
	vm.MustRun(t, "ip", "link", "set", vmIf, "master", l.Bridge, "up")
	vm.MustRun(t, "ip", "link", "set", l.Tap, "master", l.Bridge, "up")
	vm.MustRun(t, "ip", "link", "set", l.Bridge, "up")

	l.client = &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{DialContext: l.DialContext, DisableKeepAlives: true},
	}
	return l
}

// keepLog saves a process's output into the test's artifacts when the test
// ends (registered after the process started, so it runs before the
// namespace, and the process, is torn down).
func (l *Lab) keepLog(name string, p *netns.Proc) {
	t := l.t
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(ArtifactDir(t), name), []byte(p.Output()), 0o644); err != nil {
			t.Logf("testlab: saving %s: %v", name, err)
		}
	})
}

// Start starts a process in the server namespace with extra environment
// variables ("K=V") and keeps its output as an artifact named name+".log".
// It is killed when the test ends.
func (l *Lab) Start(name string, env []string, bin string, args ...string) *netns.Proc {
	t := l.t
	t.Helper()
	argv := append(append([]string{}, env...), bin)
	argv = append(argv, args...)
	// env execs in place, like ip netns exec: the PID is the server's own.
	p, err := l.Server.Start(context.Background(), "env", argv...)
	if err != nil {
		t.Fatalf("testlab: %v", err)
	}
	l.keepLog(name+".log", p)
	return p
}

// DialContext dials from inside the server namespace, for clients in the
// test process (which stays in the root namespace).
func (l *Lab) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := l.Server.Do(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// HTTPClient returns a client whose connections start in the server
// namespace: it reaches the servers there by their addresses in it
// (127.0.0.1 for something listening on the namespace's loopback,
// ServerIP for the link).
func (l *Lab) HTTPClient() *http.Client { return l.client }

// WaitHTTP polls url through HTTPClient until it answers 200 or timeout
// passes; it fails the test with proc's output if proc exits first.
func (l *Lab) WaitHTTP(url string, timeout time.Duration, proc *netns.Proc) {
	t := l.t
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if proc != nil {
			select {
			case <-proc.Done():
				t.Fatalf("testlab: the server exited while waiting for %s: %v\n%s", url, proc.Wait(), tail(proc.Output(), 40))
			default:
			}
		}
		resp, err := l.client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	out := ""
	if proc != nil {
		out = tail(proc.Output(), 40)
	}
	t.Fatalf("testlab: %s did not answer 200 within %s (last: %s)\n%s", url, timeout, last, out)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Tail returns the last n lines of s, for failure messages with a log.
func Tail(s string, n int) string { return tail(s, n) }

// ArtifactDir is where the test keeps what a person debugging a failure
// needs (serial console, server logs, QEMU command line):
// $LPMOS_ARTIFACTS/<test name>, default os.TempDir()/lpmos-artifacts/<test
// name>. It is emptied the first time a test asks for it in a process, so
// it always holds the last run, and is left in place afterwards.
func ArtifactDir(t testing.TB) string {
	t.Helper()
	base := os.Getenv("LPMOS_ARTIFACTS")
	if base == "" {
		base = filepath.Join(os.TempDir(), "lpmos-artifacts")
	}
	dir := filepath.Join(base, sanitize(t.Name()))
	artifactsMu.Lock()
	defer artifactsMu.Unlock()
	if !artifactsSeen[dir] {
		artifactsSeen[dir] = true
		_ = os.RemoveAll(dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("testlab: artifacts: %v", err)
	}
	return dir
}

func sanitize(name string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, name)
}

// Logf is t.Logf with the time since start, for timings in the test log.
func Logf(t testing.TB, start time.Time, format string, args ...any) {
	t.Helper()
	t.Logf("[%6.1fs] %s", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

// SiteDHCPIP is the address of the site's DHCP server (StartSiteDHCP).
const SiteDHCPIP = "10.99.0.2"

// StartSiteDHCP plays the site's existing DHCP server, for ProxyDHCP
// scenarios: dnsmasq in a namespace of its own on the VM's bridge hands
// out addresses from DHCPRange and nothing about network boot, so the boot
// information can only come from a ProxyDHCP server. Its log is kept as the
// artifact site-dhcp.log; it stops when the test ends.
func (l *Lab) StartSiteDHCP() *netns.Proc {
	t := l.t
	t.Helper()
	site := netns.New(t)
	siteIf, vmIf := netns.Veth(t, site, SiteDHCPIP+"/24", l.VM, "")
	l.VM.MustRun(t, "ip", "link", "set", vmIf, "master", l.Bridge, "up")
	first, last, _ := strings.Cut(DHCPRange, "-")
	dir := t.TempDir()
	p, err := site.Start(context.Background(), "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
		"--bind-interfaces", "--interface="+siteIf, "--dhcp-range="+first+","+last+",255.255.255.0,1h",
		"--dhcp-authoritative", "--no-ping", "--user=root", "--log-dhcp",
		"--dhcp-leasefile="+filepath.Join(dir, "leases"), "--pid-file="+filepath.Join(dir, "pid"))
	if err != nil {
		t.Fatalf("testlab: site DHCP server (dnsmasq): %v", err)
	}
	l.keepLog("site-dhcp.log", p)
	if !netns.WaitFor(10*time.Second, func() bool { return strings.Contains(p.Output(), "DHCP, IP range") }) {
		t.Fatalf("testlab: dnsmasq did not start:\n%s", p.Output())
	}
	return p
}

// SolicitRouter asks the VM link for an IPv6 router as a booting machine
// does: rdisc6 in a namespace of its own, plugged into the VM's bridge,
// sends router solicitations (tries of them, 500 ms apart) and stops at the
// first router advertisement. It returns rdisc6's output and whether an
// advertisement came.
func (l *Lab) SolicitRouter(tries int) (string, bool) {
	t := l.t
	t.Helper()
	probe := netns.New(t)
	probe.MustRun(t, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	probeIf, vmIf := netns.Veth(t, probe, "", l.VM, "")
	l.VM.MustRun(t, "ip", "link", "set", vmIf, "master", l.Bridge, "up")
	if !netns.WaitFor(10*time.Second, func() bool {
		out, _ := probe.Run(context.Background(), "ip", "-6", "-o", "addr", "show", "dev", probeIf, "scope", "link")
		return strings.Contains(out, "fe80::") && !strings.Contains(out, "tentative")
	}) {
		t.Fatalf("testlab: the probe's %s has no usable IPv6 link-local address", probeIf)
	}
	out, err := probe.Run(context.Background(), "rdisc6", "-1", "-r", fmt.Sprint(tries), "-w", "500", probeIf)
	return out, err == nil && strings.Contains(out, "Router lifetime")
}

// routerIPv6 is the server's address when StartIPv6Router plays a site's
// IPv6 router: dnsmasq advertises its prefix.
const routerIPv6 = "fd99::1/64"

// StartIPv6Router plays a site's IPv6 router, for comparisons with the
// region's own responder (which should then be off, --ipv6-ra=false):
// dnsmasq on the server interface sends router advertisements of
// fd99::/64 for SLAAC and nothing else (no DNS, no DHCPv4, ra-only so no
// DHCPv6). Its log is kept as the artifact ipv6-router.log; it stops when
// the test ends.
func (l *Lab) StartIPv6Router() *netns.Proc {
	t := l.t
	t.Helper()
	l.Server.MustRun(t, "ip", "addr", "add", routerIPv6, "dev", l.ServerIf, "nodad")
	dir := t.TempDir()
	p, err := l.Server.Start(context.Background(), "dnsmasq", "--keep-in-foreground",
		"--conf-file=/dev/null", "--port=0", "--user=root",
		"--interface="+l.ServerIf, "--bind-interfaces",
		"--pid-file="+filepath.Join(dir, "dnsmasq.pid"),
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"),
		"--log-facility=-",
		"--enable-ra", "--dhcp-range=::,constructor:"+l.ServerIf+",ra-only,64,1h")
	if err != nil {
		t.Fatalf("testlab: IPv6 router (dnsmasq): %v", err)
	}
	l.keepLog("ipv6-router.log", p)
	if !netns.WaitFor(10*time.Second, func() bool { return strings.Contains(p.Output(), "router advertisement on") }) {
		t.Fatalf("testlab: dnsmasq does not advertise:\n%s", p.Output())
	}
	return p
}
