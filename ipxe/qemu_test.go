package ipxe

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
)

// These tests run the rendered scripts in Debian's own iPXE inside QEMU
// (no root needed: user-mode networking; TCG, because iPXE hung under the
// nested KVM of the machines these tests were written on). QEMU's virtio-net
// option ROM is iPXE from the same 2019 source; it chain-loads the binary
// under test (undionly.kpxe or snponly.efi from /usr/lib/ipxe), which asks
// DHCP again and fetches the script. They need the Debian packages
// qemu-system-x86, ipxe-qemu, ipxe and ovmf (the README test command
// installs them) and fail without them; they are skipped only with -short.
// Booting the agent script into a real kernel is the end-to-end tests' job.

// guestHost is how a QEMU user-network guest reaches the host's loopback.
const guestHost = "10.0.2.2"

type vmFirmware int

const (
	vmBIOS vmFirmware = iota
	vmUEFI
)

func needQEMU(t *testing.T, fw vmFirmware) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots QEMU; skipped with -short")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 not installed (Debian package qemu-system-x86): run ./scripts/test.sh, which installs it")
	}
	files := []string{
		filepath.Join(lpmos.DefaultIPXEDir, lpmos.IPXEBinaryBIOS),
		filepath.Join(lpmos.DefaultIPXEDir, lpmos.IPXEBinaryUEFI),
		filepath.Join(lpmos.DefaultIPXEDir, "qemu", "pxe-virtio.rom"),
	}
	if fw == vmUEFI {
		files = append(files, filepath.Join(lpmos.DefaultIPXEDir, "qemu", "efi-virtio.rom"), "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd")
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s missing (Debian packages ipxe, ipxe-qemu, ovmf): run ./scripts/test.sh, which installs them", f)
		}
	}
}

// bootServer serves the first request for /boot.ipxe a script that chains
// the iPXE binary under test, and later requests the script under test;
// other paths come from files (path -> content). It counts requests.
type bootServer struct {
	*httptest.Server
	mu     sync.Mutex
	counts map[string]int
}

func newBootServer(t *testing.T, binary string, script func(base string) []byte, files map[string][]byte) *bootServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	b := &bootServer{counts: map[string]int{}}
	b.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.counts[r.URL.Path]++
		n := b.counts[r.URL.Path]
		b.mu.Unlock()
		switch {
		case r.URL.Path == "/boot.ipxe" && n == 1:
			fmt.Fprintf(w, "#!ipxe\nchain %s/%s\n", b.base(), binary)
		case r.URL.Path == "/boot.ipxe":
			_, _ = w.Write(script(b.base()))
		case r.URL.Path == "/"+binary:
			http.ServeFile(w, r, filepath.Join(lpmos.DefaultIPXEDir, binary))
		case files[r.URL.Path] != nil:
			_, _ = w.Write(files[r.URL.Path])
		default:
			http.NotFound(w, r)
		}
	}))
	b.Listener.Close()
	b.Listener = ln
	b.Start()
	t.Cleanup(b.Close)
	return b
}

// base is the server's URL as the guest sees it.
func (b *bootServer) base() string {
	return "http://" + guestHost + ":" + fmt.Sprint(b.Listener.Addr().(*net.TCPAddr).Port)
}

func (b *bootServer) count(path string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.counts[path]
}

// runVM boots a VM that network-boots from b and returns its serial log
// once QEMU exits (the guest powered off or rebooted: -no-reboot) or once
// the log contains until. exited says which.
func runVM(t *testing.T, fw vmFirmware, b *bootServer, disk string, until string) (serial string, exited bool) {
	t.Helper()
	dir := t.TempDir()
	log := filepath.Join(dir, "serial.log")
	args := []string{"-machine", "q35", "-accel", "tcg", "-m", "512", "-display", "none",
		"-no-reboot", "-serial", "file:" + log,
		"-netdev", "user,id=n0,bootfile=" + b.base() + "/boot.ipxe",
		"-device", "virtio-net-pci,netdev=n0,bootindex=1"}
	switch fw {
	case vmBIOS:
		// SeaBIOS copies iPXE's screen output to the serial port.
		sercon := filepath.Join(dir, "sercon")
		require.NoError(t, os.WriteFile(sercon, []byte{0xf8, 0x03}, 0o644))
		args = append(args, "-fw_cfg", "name=etc/sercon-port,file="+sercon)
	case vmUEFI:
		vars := filepath.Join(dir, "vars.fd")
		v, err := os.ReadFile("/usr/share/OVMF/OVMF_VARS_4M.fd")
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(vars, v, 0o644))
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
			"-drive", "if=pflash,format=raw,unit=1,file="+vars,
			"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n")
	}
	if disk != "" {
		args = append(args, "-drive", "file="+disk+",format=raw,if=ide")
	}

	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())

	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	read := func() string { b, _ := os.ReadFile(log); return strings.ReplaceAll(string(b), "\r", "") }
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-waited:
			s := read()
			require.NoError(t, err, "qemu: %s\nserial log:\n%s", out.String(), tail(s))
			return s, true
		case <-tick.C:
			if s := read(); until != "" && strings.Contains(s, until) {
				cancel()
				<-waited
				return s, false
			}
		case <-ctx.Done():
			<-waited
			s := read()
			t.Fatalf("VM did not finish: %v\nserial log:\n%s", ctx.Err(), tail(s))
			return s, false
		}
	}
}

func tail(s string) string {
	if len(s) > 4000 {
		return "…" + s[len(s)-4000:]
	}
	return s
}

// mbrDisk writes a disk whose boot sector prints marker on COM1 and halts.
func mbrDisk(t *testing.T, marker string) string {
	code := []byte{
		0x31, 0xc0, // xor ax, ax
		0x8e, 0xd8, // mov ds, ax
		0xba, 0xf8, 0x03, // mov dx, 0x3f8
		0xbe, 0x17, 0x7c, // mov si, 0x7c17 (msg)
		0xfc,       // cld
		0xac,       // loop: lodsb
		0x84, 0xc0, // test al, al
		0x74, 0x03, // jz done
		0xee,       // out dx, al
		0xeb, 0xf8, // jmp loop
		0xfa, 0xf4, // done: cli; hlt
		0xeb, 0xfe, // jmp $
	}
	sector := make([]byte, 1<<20)
	copy(sector, code)
	copy(sector[len(code):], marker+"\n\x00")
	sector[510], sector[511] = 0x55, 0xaa
	p := filepath.Join(t.TempDir(), "disk.img")
	require.NoError(t, os.WriteFile(p, sector, 0o644))
	return p
}

func TestQEMULocalBootBIOS(t *testing.T) {
	needQEMU(t, vmBIOS)
	t.Parallel()
	mac := testMAC(t)
	b := newBootServer(t, lpmos.IPXEBinaryBIOS, func(string) []byte {
		s, err := LocalBoot(LocalParams{MAC: mac, TaskID: testTask, Firmware: lpmos.FirmwareBIOS})
		require.NoError(t, err)
		return s
	}, nil)
	serial, _ := runVM(t, vmBIOS, b, mbrDisk(t, "LPMOS-MBR-OK"), "LPMOS-MBR-OK")
	assert.Contains(t, serial, "Booting from SAN device 0x80", "sanboot, not the BIOS, booted the disk")
	assert.Equal(t, 2, b.count("/boot.ipxe"))
}

func TestQEMUAgentRetryBIOS(t *testing.T) {
	needQEMU(t, vmBIOS)
	t.Parallel()
	b := newBootServer(t, lpmos.IPXEBinaryBIOS, func(base string) []byte {
		p := agentParams(t)
		p.RegionURL, p.KernelURL, p.InitrdURL = base, base+"/missing/vmlinuz", base+"/initrd.img"
		p.Attempts = 2
		s, err := Agent(p)
		require.NoError(t, err)
		return s
	}, nil)
	serial, exited := runVM(t, vmBIOS, b, "", "")
	assert.True(t, exited, "the script ends in reboot, which stops QEMU with -no-reboot")
	assert.Equal(t, 2, b.count("/missing/vmlinuz"), "one download per attempt")
	assert.Contains(t, serial, "LPMOS: loading the agent failed (attempt 1 of 2), retrying in 5 seconds")
	assert.Contains(t, serial, "LPMOS: could not load the agent after 2 attempts, rebooting in 10 seconds")
}

func TestQEMUStopUEFI(t *testing.T) {
	needQEMU(t, vmUEFI)
	t.Parallel()
	mac := testMAC(t)
	b := newBootServer(t, lpmos.IPXEBinaryUEFI, func(string) []byte {
		s, err := Stop(StopParams{MAC: mac, TaskID: testTask, Reason: Cancelled, Sleep: 1})
		require.NoError(t, err)
		return s
	}, nil)
	// Debian's iPXE has no poweroff: the script must fall back to exit,
	// and the firmware then moves on to its next boot option.
	serial, exited := runVM(t, vmUEFI, b, "", "EFI Internal Shell")
	if exited {
		return // an iPXE build with poweroff
	}
	assert.Contains(t, serial, "was cancelled")
	assert.Contains(t, serial, "poweroff: command not found")
}
