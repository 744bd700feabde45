// Package netns builds throwaway network namespaces for tests: a namespace
// per host, veth pairs or a bridge between them, addresses, and ways to run
// commands and Go code inside. DHCP, TFTP and HTTP tests put a server in one
// namespace and real clients (dhclient, udhcpc, perfdhcp, curl, QEMU) in
// another, so they exercise real sockets, broadcasts and interfaces without
// touching the machine's own network.
//
// Every namespace is named "lpt-" plus a random suffix, so parallel tests
// and leftovers of killed runs never collide, and is deleted by t.Cleanup
// together with the processes started in it, also when the test fails.
//
// It needs root and iproute2's ip command. Without them the test fails with
// a message naming the README's test command: these tests are part of the
// suite and must not be skipped silently. It is test support, not API: it
// must not be imported by non-test code.
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lpmos/lpmos/internal/syncbuf"
)

// Prefix starts the name of every namespace this package creates.
const Prefix = "lpt-"

// NS is a network namespace that lives as long as the test that created it.
type NS struct {
	// Name is the namespace's name for `ip netns`, e.g. "lpt-3fa9c2d1".
	Name string

	t      testing.TB
	mu     sync.Mutex
	nextIf int
	procs  []*Proc
}

// Require fails the test unless it can create namespaces: it runs as root
// and the ip command is installed.
func Require(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("netns: this test needs root to create network namespaces; run the suite as root with ./scripts/test.sh (see README.md), which also installs the tools it needs")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatalf("netns: this test needs the ip command (Debian package iproute2): %v; ./scripts/test.sh (see README.md) installs it", err)
	}
}

// New creates an empty namespace with its loopback up. t.Cleanup kills the
// processes left in it and deletes it.
func New(t testing.TB) *NS {
	t.Helper()
	Require(t)
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("netns: random name: %v", err)
	}
	ns := &NS{Name: Prefix + hex.EncodeToString(b[:]), t: t}
	if out, err := exec.Command("ip", "netns", "add", ns.Name).CombinedOutput(); err != nil {
		t.Fatalf("netns: ip netns add %s: %v: %s", ns.Name, err, out)
	}
	t.Cleanup(func() { ns.destroy(t) })
	// `ip netns exec` bind-mounts /etc/netns/{name}/* over /etc/* in the
	// command's mount namespace: a DHCP client in the namespace (isc
	// dhclient-script, our agent's netup) then writes this
	// file, not the host's /etc/resolv.conf, which it would otherwise
	// overwrite (with no nameserver at all: the host then loses DNS).
	if err := os.MkdirAll(ns.etcDir(), 0o755); err != nil {
		t.Fatalf("netns: %v", err)
	}
	if err := os.WriteFile(filepath.Join(ns.etcDir(), "resolv.conf"), nil, 0o644); err != nil {
		t.Fatalf("netns: %v", err)
	}
	ns.MustRun(t, "ip", "link", "set", "lo", "up")
	return ns
}

// etcDir holds the files `ip netns exec` mounts over /etc in the namespace.
func (ns *NS) etcDir() string { return filepath.Join("/etc/netns", ns.Name) }

// destroy kills whatever still runs in the namespace (only processes this
// test started can be there: the name is unique) and deletes it.
func (ns *NS) destroy(t testing.TB) {
	ns.mu.Lock()
	procs := ns.procs
	ns.mu.Unlock()
	for _, p := range procs {
		p.Stop()
	}
	out, _ := exec.Command("ip", "netns", "pids", ns.Name).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
		t.Errorf("netns: deleting %s: %v: %s", ns.Name, err, out)
	}
	if err := os.RemoveAll(ns.etcDir()); err != nil {
		t.Errorf("netns: %v", err)
	}
}

// Path is the namespace's file, for setns(2) or tools that take a path.
func (ns *NS) Path() string { return "/run/netns/" + ns.Name }

// String returns the name.
func (ns *NS) String() string { return ns.Name }

// ifName returns a fresh interface name inside ns.
func (ns *NS) ifName(prefix string) string {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	n := ns.nextIf
	ns.nextIf++
	return prefix + strconv.Itoa(n)
}

// Command returns a command that runs inside ns (`ip netns exec`, which
// execs in place: the process's PID is the command's own).
func (ns *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Run runs a command inside ns and returns its combined output; the error
// includes the output.
func (ns *NS) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := ns.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s %s: %w: %s", ns.Name, name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// MustRun is Run for set-up steps: it fails the test on error.
func (ns *NS) MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := ns.Run(context.Background(), name, args...)
	if err != nil {
		t.Fatalf("netns: %v", err)
	}
	return out
}

// Proc is a background process started in a namespace.
type Proc struct {
	Cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
	err  error
}

// Start starts a command inside ns in the background, in its own process
// group, and keeps its combined output for Output. It is killed (SIGKILL to
// its group, by PID) when ctx ends or at the end of the test that created
// ns, whichever comes first. The kill is a cleanup of its own, registered
// now: it runs before the cleanups registered earlier, among them the
// removal of the test's temporary directories, so a server writing its
// data directory (etcd's WAL, a lease file) is gone before that directory
// is removed rather than racing the removal.
func (ns *NS) Start(ctx context.Context, name string, args ...string) (*Proc, error) {
	cmd := ns.Command(ctx, name, args...)
	buf := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("netns: starting %s in %s: %w", name, ns.Name, err)
	}
	p := &Proc{Cmd: cmd, out: buf, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	ns.mu.Lock()
	ns.procs = append(ns.procs, p)
	ns.mu.Unlock()
	ns.t.Cleanup(p.Stop)
	return p, nil
}

// Stop kills the process group and waits for the process; it may be called
// more than once.
func (p *Proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns its error.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Output is what the process printed so far (stdout and stderr).
func (p *Proc) Output() string { return p.out.String() }

// Do runs fn on an OS thread that has entered ns. Sockets fn opens stay in
// ns and may then be used from any goroutine, which is how a test serves
// from inside a namespace in-process. The thread returns to its original
// namespace afterwards; if that fails it stays locked to its goroutine and
// exits with it, so no other goroutine can end up in ns by accident.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := os.Open(ns.Path())
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: %w", err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netns: entering %s: %w", ns.Name, err)
			return
		}
		defer func() {
			if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
				runtime.UnlockOSThread()
			} // else: keep the thread locked; it is discarded when this goroutine ends
		}()
		errc <- fn()
	}()
	return <-errc
}

// ListenPacket opens a packet socket inside ns (see net.ListenPacket).
func (ns *NS) ListenPacket(network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := ns.Do(func() (err error) {
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

// Listen opens a stream listener inside ns (see net.Listen).
func (ns *NS) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := ns.Do(func() (err error) {
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// AddAddr assigns an address in CIDR form ("10.0.0.1/24") to an interface.
func (ns *NS) AddAddr(t testing.TB, ifname, cidr string) {
	t.Helper()
	ns.MustRun(t, "ip", "addr", "add", cidr, "dev", ifname)
}

// SetMAC sets an interface's hardware address, for tests that need a
// known client MAC.
func (ns *NS) SetMAC(t testing.TB, ifname string, mac net.HardwareAddr) {
	t.Helper()
	ns.MustRun(t, "ip", "link", "set", "dev", ifname, "address", mac.String())
}

// Veth connects a and b with a veth pair, gives each end the address in
// CIDR form if it is not empty, brings both up and returns the interface
// names (in a, in b).
func Veth(t testing.TB, a *NS, aCIDR string, b *NS, bCIDR string) (aIf, bIf string) {
	t.Helper()
	aIf, bIf = a.ifName("veth"), b.ifName("veth")
	a.MustRun(t, "ip", "link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", b.Name)
	for _, end := range []struct {
		ns   *NS
		ifn  string
		cidr string
	}{{a, aIf, aCIDR}, {b, bIf, bCIDR}} {
		if end.cidr != "" {
			end.ns.AddAddr(t, end.ifn, end.cidr)
		}
		end.ns.MustRun(t, "ip", "link", "set", end.ifn, "up")
	}
	return aIf, bIf
}

// Bridge is a Linux bridge in its own namespace: a switch that several
// namespaces plug into, for topologies with more than two hosts on one
// link (a client, an existing DHCP server and a ProxyDHCP server).
type Bridge struct {
	NS   *NS
	Name string
}

// NewBridge creates a namespace holding a bridge that forwards at once (no
// STP, no forwarding delay, no multicast snooping, so broadcasts and
// multicast reach every port from the first packet).
func NewBridge(t testing.TB) *Bridge {
	t.Helper()
	hub := New(t)
	br := &Bridge{NS: hub, Name: "br0"}
	hub.MustRun(t, "ip", "link", "add", br.Name, "type", "bridge",
		"stp_state", "0", "forward_delay", "0", "mcast_snooping", "0")
	hub.MustRun(t, "ip", "link", "set", br.Name, "up")
	return br
}

// Attach plugs ns into the bridge with a new veth pair, gives ns's end the
// address in CIDR form unless it is empty, and returns that end's name.
func (br *Bridge) Attach(t testing.TB, ns *NS, cidr string) string {
	t.Helper()
	port, ifn := Veth(t, br.NS, "", ns, cidr)
	br.NS.MustRun(t, "ip", "link", "set", port, "master", br.Name)
	return ifn
}

// WaitFor polls cond every 20 ms until it returns true or the timeout ends;
// it reports whether cond became true. Handy for waiting on files a
// background process writes.
func WaitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ErrNotRoot is returned by Check when the process cannot create namespaces.
var ErrNotRoot = errors.New("netns: not running as root")

// Check reports, without failing a test, whether namespaces can be created
// here; for TestMain functions and scripts that want to say why early.
func Check() error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("netns: %w", err)
	}
	return nil
}
