package testlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lpmos/lpmos"
)

// OVMF firmware files (Debian package ovmf).
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// Disk creates a sparse raw disk image of size bytes in the test's temporary
// directory and returns its path.
func Disk(t testing.TB, size int64) string {
	t.Helper()
	name := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(name)
	if err == nil {
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		t.Fatalf("testlab: disk: %v", err)
	}
	return name
}

// VMConfig describes the VM RunVM boots. Zero values are sensible defaults.
type VMConfig struct {
	// Firmware: lpmos.FirmwareBIOS (SeaBIOS running the NIC's iPXE ROM,
	// the default), lpmos.FirmwareUEFI (OVMF's own PXE: TFTP of the iPXE
	// binary) or lpmos.FirmwareUEFIHTTP (OVMF's HTTP boot).
	Firmware lpmos.Firmware
	// MAC of the VM's virtio NIC; default 52:54:00:99:00:10.
	MAC string
	// Memory in MiB (default 512) and CPUs (default 1).
	Memory, CPUs int
	// Disk is a raw image attached as a virtio disk (see Disk); empty for
	// no disk.
	Disk string
	// Timeout bounds the whole run; QEMU is killed when it passes. Default
	// 3 minutes.
	Timeout time.Duration
	// Reboot lets the guest reboot (by default QEMU exits when it does:
	// -no-reboot), for tests that follow the machine past the install.
	Reboot bool
	// DiskWriteBps, if > 0, throttles writes to Disk to that many bytes
	// per second (QEMU block throttling): a slow disk keeps an install
	// running long enough to be interrupted.
	DiskWriteBps int64
	// Extra arguments for QEMU, after the lab's own (devices, e.g. a BMC:
	// ipmisim.QEMUDevices).
	Extra []string
	// DiskFirst gives the disk the first bootindex and the NIC the
	// second (by default the NIC comes first), as a server booting its
	// installed disk; a blank disk falls through to the network.
	DiskFirst bool
}

// QEMU device IDs of the VM's NIC and disk (for QMP, e.g. reordering
// their bootindex while it runs).
const (
	NICID  = "nic0"
	DiskID = "disk0"
)

// DefaultMAC is the VM's MAC unless VMConfig.MAC says otherwise.
const DefaultMAC = "52:54:00:99:00:10"

// VMResult is what a VM run left behind.
type VMResult struct {
	// Serial is the serial console's content (also kept as the artifact
	// serial.log).
	Serial string
	// Err is nil if QEMU exited by itself with status 0 (the guest powered
	// off, or rebooted: -no-reboot).
	Err error
	// TimedOut is true if QEMU was killed at the timeout.
	TimedOut bool
	// Duration is how long QEMU ran.
	Duration time.Duration
	// Args is QEMU's command line.
	Args []string
}

// Accel returns the QEMU accelerator the lab uses: "tcg" unless
// LPMOS_E2E_ACCEL=kvm and /dev/kvm can be opened. iPXE was seen to hang
// under the nested KVM of the machines these tests were written on, so
// KVM is opt-in.
func Accel() string {
	if os.Getenv("LPMOS_E2E_ACCEL") != "kvm" {
		return "tcg"
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	f.Close()
	return "kvm"
}

// VM is a running VM; see StartVM.
type VM struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	ctx    context.Context
	cfg    VMConfig
	serial string
	art    string
	start  time.Time
	out    *bytes.Buffer
	done   chan struct{}
	res    VMResult
}

// RunVM boots a VM attached to the lab's tap device and waits until it
// exits or cfg.Timeout passes: StartVM, then Wait.
func (l *Lab) RunVM(ctx context.Context, t testing.TB, cfg VMConfig) VMResult {
	t.Helper()
	return l.StartVM(ctx, t, cfg).Wait()
}

// StartVM boots a VM attached to the lab's tap device (one VM per lab at a
// time) and returns at once. The serial console goes to serial.log in the
// test's artifacts, next to qemu.cmd and qemu.log (QEMU's own output).
// QEMU is killed when cfg.Timeout passes, when ctx ends, on Stop, or at the
// end of the test. Failing to start QEMU fails the test.
func (l *Lab) StartVM(ctx context.Context, t testing.TB, cfg VMConfig) *VM {
	t.Helper()
	cfg, args, serial, art := l.vmArgs(t, cfg)
	vctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	vm := &VM{cfg: cfg, serial: serial, art: art, ctx: vctx, cancel: cancel,
		out: &bytes.Buffer{}, done: make(chan struct{})}
	vm.res.Args = args
	vm.cmd = l.VM.Command(vctx, "qemu-system-x86_64", args...)
	vm.cmd.Stdout, vm.cmd.Stderr = vm.out, vm.out
	vm.start = time.Now()
	if err := vm.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("testlab: starting QEMU: %v", err)
	}
	go vm.wait()
	t.Cleanup(func() { vm.Stop() })
	return vm
}

// VMCommand returns the command line (argv) of the VM StartVM would boot,
// for whoever starts it instead of the test (a BMC simulator powering it
// on): QEMU in the lab's VM namespace (ip netns exec), attached to its tap
// device, its serial console going to the returned file (the artifact
// serial.log). cfg.Timeout does not apply: whoever starts it stops it.
func (l *Lab) VMCommand(t testing.TB, cfg VMConfig) (argv []string, serial string) {
	t.Helper()
	_, args, serial, _ := l.vmArgs(t, cfg)
	return append([]string{"ip", "netns", "exec", l.VM.Name, "qemu-system-x86_64"}, args...), serial
}

// vmArgs fills cfg's defaults and returns QEMU's arguments, the serial
// console's file and the artifact directory (where it writes qemu.cmd).
func (l *Lab) vmArgs(t testing.TB, cfg VMConfig) (VMConfig, []string, string, string) {
	t.Helper()
	if cfg.Firmware == "" {
		cfg.Firmware = lpmos.FirmwareBIOS
	}
	if cfg.MAC == "" {
		cfg.MAC = DefaultMAC
	}
	if cfg.Memory == 0 {
		cfg.Memory = 512
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 1
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 3 * time.Minute
	}
	art := ArtifactDir(t)
	serial := filepath.Join(art, "serial.log")
	_ = os.Remove(serial)
	work := t.TempDir()

	accel := Accel()
	cpu := "qemu64,+rdrand" // TCG implements RDRAND: the guest's entropy is ready at once
	if accel == "kvm" {
		cpu = "host"
	}
	args := []string{
		"-name", "lpmos-e2e-" + string(cfg.Firmware),
		"-machine", "q35", "-accel", accel, "-cpu", cpu,
		"-m", strconv.Itoa(cfg.Memory), "-smp", strconv.Itoa(cfg.CPUs),
		"-display", "none", "-monitor", "none", "-serial", "file:" + serial,
		"-netdev", "tap,id=n0,ifname=" + l.Tap + ",script=no,downscript=no",
	}
	if !cfg.Reboot {
		args = append(args, "-no-reboot")
	}
	nicIndex, diskIndex := 1, 2
	if cfg.DiskFirst {
		nicIndex, diskIndex = 2, 1
	}
	if cfg.Disk != "" {
		drive := "file=" + cfg.Disk + ",format=raw,if=none,id=d0,cache=unsafe"
		if cfg.DiskWriteBps > 0 {
			drive += ",throttling.bps-write=" + strconv.FormatInt(cfg.DiskWriteBps, 10)
		}
		// The disk has a bootindex (by default 2: after the NIC). OVMF
		// keeps only the boot options QEMU's boot order names, so
		// without it an installed disk would never be tried after iPXE
		// exits.
		args = append(args, "-drive", drive, "-device", "virtio-blk-pci,drive=d0,id="+DiskID+",bootindex="+strconv.Itoa(diskIndex))
	}
	nic := "virtio-net-pci,netdev=n0,mac=" + cfg.MAC + ",id=" + NICID + ",bootindex=" + strconv.Itoa(nicIndex)
	switch cfg.Firmware {
	case lpmos.FirmwareBIOS:
		// SeaBIOS runs the NIC's iPXE option ROM. Its "sercon" copies the
		// BIOS and iPXE screen to the serial port (0x3f8, little endian).
		sercon := filepath.Join(work, "sercon-port")
		if err := os.WriteFile(sercon, []byte{0xf8, 0x03}, 0o644); err != nil {
			t.Fatalf("testlab: %v", err)
		}
		args = append(args, "-device", nic, "-fw_cfg", "name=etc/sercon-port,file="+sercon)
	case lpmos.FirmwareUEFI, lpmos.FirmwareUEFIHTTP:
		// romfile= (no iPXE ROM): OVMF's own PXE or HTTP boot does the work.
		vars := filepath.Join(work, "OVMF_VARS.fd")
		if err := copyFile(ovmfVars, vars); err != nil {
			t.Fatalf("testlab: OVMF (Debian package ovmf; ./scripts/test.sh installs it): %v", err)
		}
		args = append(args, "-device", nic+",romfile=",
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars,
			// A failed PXEv4 would otherwise sit ~65 s in PXEv6.
			"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n")
		if cfg.Firmware == lpmos.FirmwareUEFIHTTP {
			// No PXEv4 option either: HTTPv4 is the first boot option.
			args = append(args, "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n")
		}
	default:
		t.Fatalf("testlab: StartVM: unsupported firmware %q", cfg.Firmware)
	}
	args = append(args, cfg.Extra...)
	_ = os.WriteFile(filepath.Join(art, "qemu.cmd"),
		[]byte("ip netns exec "+l.VM.Name+" qemu-system-x86_64 "+shellQuote(args)+"\n"), 0o644)
	return cfg, args, serial, art
}

func (vm *VM) wait() {
	defer close(vm.done)
	defer vm.cancel()
	err := vm.cmd.Wait()
	res := &vm.res
	res.Duration = time.Since(vm.start)
	_ = os.WriteFile(filepath.Join(vm.art, "qemu.log"), vm.out.Bytes(), 0o644)
	switch {
	case errors.Is(vm.ctx.Err(), context.DeadlineExceeded):
		res.TimedOut = true
		res.Err = fmt.Errorf("QEMU killed after %s (timeout)", vm.cfg.Timeout)
	case vm.ctx.Err() != nil:
		res.Err = fmt.Errorf("QEMU stopped: %w", vm.ctx.Err())
	case err != nil:
		res.Err = fmt.Errorf("QEMU: %w: %s", err, strings.TrimSpace(vm.out.String()))
	}
	b, _ := os.ReadFile(vm.serial)
	res.Serial = string(b)
}

// Done is closed when QEMU has exited.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// Wait waits for QEMU to exit and returns how the run went.
func (vm *VM) Wait() VMResult {
	<-vm.done
	return vm.res
}

// Stop kills QEMU (if it still runs) and returns how the run went.
func (vm *VM) Stop() VMResult {
	vm.cancel()
	return vm.Wait()
}

// Serial returns the serial console so far.
func (vm *VM) Serial() string {
	b, _ := os.ReadFile(vm.serial)
	return string(b)
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && !strings.ContainsAny(a, " \t\n'\"\\$`;&|<>()*?!#~") {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
