// Package ipmisim runs OpenIPMI's ipmi_sim (Debian package openipmi) as the
// BMC of a test machine: a real IPMI 2.0 implementation listening for RMCP+
// on a free loopback UDP port, with one administrator account.
//
// ipmi_sim switches the machine's power through a chassis control program
// this package writes: powering on starts Config.Machine (a command, e.g.
// a QEMU virtual machine) in its own process group, powering off kills it,
// and the power state is whether it runs. So a test never starts the
// machine itself; whoever speaks IPMI to the simulator does.
//
// Why a chassis control program and not ipmi_sim's own startcmd: ipmi_sim
// (2.0.33, Debian 12) stores the boot flags of Set System Boot Options
// only through a chassis control program (or a loaded module); without
// one it answers them with completion code 0xCC, so "boot from PXE next"
// could not be tested. And once a chassis control program is configured,
// ipmi_sim asks it, not startcmd, for power on, off and state. The program
// gives the machine the boot device in the environment variable
// LPMOS_IPMI_BOOT ("pxe", "disk" or empty) and clears the flag when it
// starts the machine, as firmware does with a next-boot-only override;
// LPMOS_IPMI_SERIAL_PORT is SerialPort.
//
// The simulator also listens for a virtual machine's BMC connection
// (ipmi_sim's "serial 15 ... codec VM", on SerialPort): a QEMU machine
// given -device ipmi-bmc-extern with a socket chardev to that port gets an
// IPMI system interface (KCS) backed by this simulator. See QEMU.
//
// Config.NS puts the simulator (and so the machine it starts) into a
// network namespace, for the end-to-end lab where the region reaches the
// BMC from its own namespace. A machine that must run elsewhere (a QEMU
// VM on the lab's tap, in the VM namespace) reaches the simulator's
// serial port through Config.SerialSocket, a Unix socket the test process
// relays: a path is the same in every network namespace.
//
// It is a test helper: everything listens on 127.0.0.1 only (of its
// namespace), state lives in the test's temporary directory, and the
// test's cleanup stops the simulator and the machine.
package ipmisim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lpmos/lpmos/internal/netns"
	"github.com/lpmos/lpmos/internal/relay"
)

// Binary is the simulator ipmi_sim, found on PATH.
const Binary = "ipmi_sim"

// Config describes the simulated BMC. Zero values are sensible defaults.
type Config struct {
	// Username and Password of the BMC's administrator (user 2); default
	// "admin" and "lpmos-ipmi".
	Username, Password string
	// Machine is the command (argv) started when the chassis is powered
	// on; empty means a placeholder process ("sleep 3600").
	Machine []string
	// StartTimeout bounds waiting for the simulator to listen; default
	// 10 s.
	StartTimeout time.Duration
	// NS, if set, is the network namespace ipmi_sim runs in: Addr and
	// SerialPort are on its loopback, and the machine starts in it too
	// (its command may enter another one, e.g. `ip netns exec`).
	NS *netns.NS
	// SerialSocket, if set, is a Unix socket path where the test process
	// relays connections to SerialPort, for a machine that cannot reach
	// the simulator's loopback (see QEMUDevices). Keep it short: a socket
	// path has at most 107 bytes.
	SerialSocket string
}

// Sim is a running ipmi_sim.
type Sim struct {
	// Addr is the RMCP+ address, 127.0.0.1:port (UDP).
	Addr string
	// Host and Port are Addr's parts.
	Host string
	Port int
	// SerialPort is the TCP port on 127.0.0.1 where the simulator waits
	// for a virtual machine's ipmi-bmc-extern connection.
	SerialPort int
	Username   string
	Password   string

	dir string
	// do runs fn in the simulator's network namespace.
	do func(fn func() error) error
	// relayed counts the connections relayed from SerialSocket.
	relayed atomic.Int64
}

// Start writes the configuration into a temporary directory, starts
// ipmi_sim and waits until it listens. It fails the test (it does not skip)
// if ipmi_sim is not installed. The test's cleanup stops the simulator and
// the machine.
func Start(t testing.TB, cfg Config) *Sim {
	t.Helper()
	bin, err := exec.LookPath(Binary)
	if err != nil {
		t.Fatalf("ipmisim: %s not found (Debian package openipmi): %v", Binary, err)
	}
	if cfg.Username == "" {
		cfg.Username = "admin"
	}
	if cfg.Password == "" {
		cfg.Password = "lpmos-ipmi"
	}
	if len(cfg.Machine) == 0 {
		cfg.Machine = []string{"sleep", "3600"}
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	dir := t.TempDir()
	s := &Sim{Host: "127.0.0.1", Username: cfg.Username, Password: cfg.Password, dir: dir,
		do: func(fn func() error) error { return fn() }}
	if cfg.NS != nil {
		s.do = cfg.NS.Do
	}
	err = s.do(func() (err error) {
		if s.Port, err = freePort("udp"); err == nil {
			s.SerialPort, err = freePort("tcp")
		}
		return err
	})
	if err != nil {
		t.Fatalf("ipmisim: %v", err)
	}
	s.Addr = net.JoinHostPort(s.Host, strconv.Itoa(s.Port))

	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatalf("ipmisim: %v", err)
	}
	files := map[string]string{
		"lan.conf":   lanConf(s, filepath.Join(dir, "chassis.sh")),
		"sim.emu":    simEmu,
		"chassis.sh": chassisScript(dir, s.SerialPort),
		"machine.sh": machineScript(cfg.Machine),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o700); err != nil {
			t.Fatalf("ipmisim: %v", err)
		}
	}

	if cfg.SerialSocket != "" {
		// Before ipmi_sim starts, so that its cleanup runs after ipmi_sim
		// and the machine are gone.
		s.relay(t, cfg.SerialSocket)
	}

	logf, err := os.Create(filepath.Join(dir, "ipmi_sim.log"))
	if err != nil {
		t.Fatalf("ipmisim: %v", err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "-c", "lan.conf", "-f", "sim.emu", "-s", "state", "-n")
	if cfg.NS != nil {
		// ip netns exec execs in place: the PID is ipmi_sim's own.
		cmd = exec.Command("ip", append([]string{"netns", "exec", cfg.NS.Name}, cmd.Args...)...)
	}
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("ipmisim: start %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		s.killMachine()
	})

	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartTimeout)
	defer cancel()
	for !s.listening() {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("ipmisim: ipmi_sim exited at start: %v\n%s", err, s.Log())
		case <-ctx.Done():
			t.Fatalf("ipmisim: ipmi_sim not listening on %s after %v\n%s", s.Addr, cfg.StartTimeout, s.Log())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return s
}

// listening reports whether ipmi_sim holds both its ports, by trying to
// bind them. It must not connect to the serial port: ipmi_sim greets a
// virtual machine there at once, and if the connection is already closed
// the write kills ipmi_sim with SIGPIPE (it does not ignore the signal).
func (s *Sim) listening() bool {
	free := false
	_ = s.do(func() error {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: s.Port})
		if err == nil {
			c.Close()
			free = true
			return nil
		}
		l, err := net.Listen("tcp", net.JoinHostPort(s.Host, strconv.Itoa(s.SerialPort)))
		if err == nil {
			l.Close()
			free = true
		}
		return nil
	})
	return !free
}

// SerialConnections is how many connections Config.SerialSocket relayed
// to the simulator: a QEMU machine's BMC device connects once per start.
func (s *Sim) SerialConnections() int { return int(s.relayed.Load()) }

// relay listens on the Unix socket path and connects every connection it
// accepts to SerialPort (dialled in the simulator's namespace), until the
// test ends. It dials only when a machine connects: see listening.
func (s *Sim) relay(t testing.TB, path string) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("ipmisim: serial socket: %v", err)
	}
	relay.Serve(t, l, func() (net.Conn, error) {
		var up net.Conn
		err := s.do(func() (err error) {
			up, err = net.DialTimeout("tcp", net.JoinHostPort(s.Host, strconv.Itoa(s.SerialPort)), 5*time.Second)
			return err
		})
		if err == nil {
			s.relayed.Add(1)
		}
		return up, err
	})
}

// Log is the simulator's output and the chassis control program's log.
func (s *Sim) Log() string {
	var b strings.Builder
	for _, name := range []string{"ipmi_sim.log", "chassis.log", "machine.log"} {
		data, _ := os.ReadFile(filepath.Join(s.dir, name))
		fmt.Fprintf(&b, "--- %s\n%s", name, data)
	}
	return b.String()
}

// MachinePID returns the process ID of the running machine, or 0 if it
// does not run (the chassis is off).
func (s *Sim) MachinePID() int {
	data, err := os.ReadFile(filepath.Join(s.dir, "machine.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 || !Alive(pid) {
		return 0
	}
	return pid
}

// Alive reports whether process pid exists and is not a zombie. The
// machine's parent is the chassis control program, which has exited, so
// whoever inherited the machine reaps it, maybe late.
func Alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, ok := strings.Cut(string(stat), ") ")
	return ok && !strings.HasPrefix(rest, "Z")
}

// Starts lists, one per power-on, the boot device the machine was started
// with: "pxe", "disk" or "" (no override).
func (s *Sim) Starts() []string {
	data, err := os.ReadFile(filepath.Join(s.dir, "starts.log"))
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if line != "" {
			out = append(out, strings.TrimPrefix(line, "boot="))
		}
	}
	return out
}

// NextBoot is the pending boot override ("pxe", "disk" or "" for none)
// that the machine's next start will get.
func (s *Sim) NextBoot() string {
	data, _ := os.ReadFile(filepath.Join(s.dir, "boot"))
	return bootName(strings.TrimSpace(string(data)))
}

// bootName maps ipmi_sim's names for boot device selectors (its boot_map:
// 1 "pxe", 2 "default" (force hard drive), 5 "cdrom", 6 "bios") to ours.
func bootName(v string) string {
	switch v {
	case "pxe":
		return "pxe"
	case "default":
		return "disk"
	case "", "none":
		return ""
	}
	return v
}

func (s *Sim) killMachine() {
	if pid := s.MachinePID(); pid > 0 {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

func freePort(network string) (int, error) {
	switch network {
	case "udp":
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	default:
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port, nil
	}
}

func lanConf(s *Sim, chassis string) string {
	return fmt.Sprintf(`# Written by lpmos internal/ipmisim: an ipmi_sim BMC for tests.
name "lpmos"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %d
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  # A virtual machine's BMC connection (QEMU ipmi-bmc-extern).
  serial 15 127.0.0.1 %d codec VM
  # Power and boot flags go through this program (see the package doc).
  chassis_control "%s"
  user 2 true "%s" "%s" admin 10 none md2 md5 straight
`, s.Port, s.SerialPort, chassis, s.Username, s.Password)
}

// simEmu is the simulated hardware: just the BMC.
const simEmu = `mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02
mc_enable 0x20
`

// chassisScript is ipmi_sim's chassis control program: ipmi_sim runs it
// (popen, and waits for its output to end) as "chassis.sh get power boot"
// and expects "power:1" lines, or "chassis.sh set power 1 boot pxe". It
// must return quickly: ipmi_sim does nothing else meanwhile.
func chassisScript(dir string, serialPort int) string {
	return `#!/bin/sh
# Written by lpmos internal/ipmisim: ipmi_sim's chassis control program.
d='` + dir + `'
echo "$*" >> "$d/chassis.log"
# Running: the process exists and is not a zombie (the machine's parent,
# this script, is gone, and whoever inherits it may reap it late).
running() {
	[ -f "$d/machine.pid" ] || return 1
	st=$(cut -d')' -f2 "/proc/$(cat "$d/machine.pid")/stat" 2>/dev/null | cut -c2)
	[ -n "$st" ] && [ "$st" != Z ]
}
start() {
	running && return 0
	boot=$(cat "$d/boot" 2>/dev/null)
	case $boot in pxe) boot=pxe ;; default) boot=disk ;; *) boot= ;; esac
	rm -f "$d/boot" # the override is for the next boot only
	echo "boot=$boot" >> "$d/starts.log"
	LPMOS_IPMI_BOOT=$boot LPMOS_IPMI_SERIAL_PORT=` + strconv.Itoa(serialPort) + ` setsid "$d/machine.sh" >> "$d/machine.log" 2>&1 </dev/null &
	echo $! > "$d/machine.pid"
}
stop() {
	running || { rm -f "$d/machine.pid"; return 0; }
	pid=$(cat "$d/machine.pid")
	kill -TERM "-$pid" 2>/dev/null
	for i in 1 2 3 4 5 6 7 8 9 10; do running || break; sleep 0.05; done
	kill -KILL "-$pid" 2>/dev/null
	rm -f "$d/machine.pid"
}
op=$1; shift
case $op in
get)
	for k in "$@"; do
		case $k in
		power) if running; then echo power:1; else echo power:0; fi ;;
		boot) b=$(cat "$d/boot" 2>/dev/null); echo "boot:${b:-none}" ;;
		esac
	done ;;
set)
	while [ $# -ge 2 ]; do
		k=$1; v=$2; shift 2
		case $k in
		power) if [ "$v" = 1 ]; then start; else stop; fi ;;
		reset) stop; start ;;
		boot) echo "$v" > "$d/boot" ;;
		esac
	done ;;
esac
exit 0
`
}

func machineScript(argv []string) string {
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return "#!/bin/sh\n# Written by lpmos internal/ipmisim: the machine ipmi_sim powers on.\nexec " + strings.Join(quoted, " ") + "\n"
}

// QEMU returns a Config.Machine command: a QEMU x86 machine (q35, TCG,
// 128 MiB, no disk) whose SeaBIOS and iPXE screens go to the returned
// serial log (SeaBIOS's sercon), with a virtio NIC on QEMU's user network
// (restrict=on: the guest reaches nothing outside; QEMU's own DHCP and
// TFTP server answer it, serving tftpDir and offering bootFile), and an
// IPMI BMC backed by the simulator: an ipmi-bmc-extern device connected to
// SerialPort (reconnecting every second) and a KCS system interface for
// the guest. It boots from the network first when the boot flag says
// "pxe", else from the (absent) disk first. It fails the test if QEMU is
// not installed.
func QEMU(t testing.TB, tftpDir, bootFile string) (argv []string, serialLog string) {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatalf("ipmisim: qemu-system-x86_64 not found (Debian package qemu-system-x86): %v", err)
	}
	dir := t.TempDir()
	serialLog = filepath.Join(dir, "serial.log")
	sercon := filepath.Join(dir, "sercon-port")
	// SeaBIOS copies its screen (and the iPXE ROM's) to this I/O port:
	// 0x3f8, little endian.
	if err := os.WriteFile(sercon, []byte{0xf8, 0x03}, 0o644); err != nil {
		t.Fatalf("ipmisim: %v", err)
	}
	script := `order=c; [ "$LPMOS_IPMI_BOOT" = pxe ] && order=n
exec "$0" -nodefaults -machine q35 -accel tcg -m 128 -display none -monitor none \
	-serial "file:$1" -boot "order=$order" \
	-netdev "user,id=n0,restrict=on,tftp=$2,bootfile=$3" -device virtio-net-pci,netdev=n0 \
	-fw_cfg "name=etc/sercon-port,file=$4" \
	-chardev "socket,id=ipmi0,host=127.0.0.1,port=$LPMOS_IPMI_SERIAL_PORT,reconnect=1" \
	-device ipmi-bmc-extern,id=bmc0,chardev=ipmi0 -device isa-ipmi-kcs,bmc=bmc0
`
	return []string{"sh", "-c", script, bin, serialLog, tftpDir, bootFile, sercon}, serialLog
}

// QEMUDevices returns the QEMU arguments of an IPMI BMC backed by the
// simulator through Config.SerialSocket: an ipmi-bmc-extern device on a
// socket chardev to path (reconnecting every second) and a KCS system
// interface for the guest.
func QEMUDevices(path string) []string {
	return []string{
		"-chardev", "socket,id=ipmi0,path=" + path + ",reconnect=1",
		"-device", "ipmi-bmc-extern,id=bmc0,chardev=ipmi0", "-device", "isa-ipmi-kcs,bmc=bmc0",
	}
}

// errNotRunning is returned by WaitMachine when the deadline passes.
var errNotRunning = errors.New("ipmisim: machine state did not change")

// WaitMachine waits until the machine runs (running true) or does not,
// bounded by ctx.
func (s *Sim) WaitMachine(ctx context.Context, running bool) error {
	for {
		if (s.MachinePID() != 0) == running {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (want running=%v): %w", errNotRunning, running, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
