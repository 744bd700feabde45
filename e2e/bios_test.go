package e2e_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/internal/testlab"
)

// standInAgent loads the initramfs's modules, prints what it found and
// powers off: enough to prove the boot path without the real agent.
const standInAgent = "github.com/lpmos/lpmos/agent/initramfs/testdata/agent"

// TestBIOSBootsAgentKernel boots a SeaBIOS VM whose NIC ROM is iPXE from
// allinone: our DHCP answers iPXE (user class "iPXE") with the URL of its
// script, /boot/{mac}.ipxe boots the agent kernel and initramfs over HTTP
// with the task's ID and token on the kernel command line, and the
// (stand-in) agent powers the VM off.
func TestBIOSBootsAgentKernel(t *testing.T) {
	bootAgentKernel(t, lpmos.FirmwareBIOS, `iPXE \(PCI [0-9a-f:.]*\) starting execution`)
}

// bootAgentKernel runs the stand-in agent scenario with a firmware; path is
// a regular expression for the serial log that proves the firmware's own
// boot path was taken (OVMF silently falls through PXE to HTTP boot).
func bootAgentKernel(t *testing.T, fw lpmos.Firmware, path string) {
	start := time.Now()
	lab := testlab.New(t)
	kernelDir := testlab.Kernel(t, standInAgent)
	testlab.Logf(t, start, "lab up, agent boot files ready")
	srv := startAllinone(t, lab, testlab.BootDir(t, kernelDir))
	testlab.Logf(t, start, "allinone ready")

	mac := testlab.DefaultMAC
	id := srv.createTask(mac, "debian", "12")
	srv.waitStatus(id, "ready", 30*time.Second)
	testlab.Logf(t, start, "task %s ready", id)

	res := lab.RunVM(context.Background(), t, testlab.VMConfig{
		Firmware: fw, MAC: mac, Disk: testlab.Disk(t, 64<<20), Timeout: 2 * time.Minute,
	})
	testlab.Logf(t, start, "QEMU exited after %s: %v", res.Duration.Round(100*time.Millisecond), res.Err)
	serial := strings.ReplaceAll(res.Serial, "\r", "")
	if res.Err != nil {
		t.Errorf("the VM did not power off by itself: %v", res.Err)
	}

	// The firmware's own path led to iPXE, which fetched our script.
	if !regexp.MustCompile(path).MatchString(serial) {
		t.Errorf("the serial log does not show the %s boot path (%s)", fw, path)
	}
	if !strings.Contains(serial, "LPMOS: booting the agent for task "+id) {
		t.Errorf("the serial log does not show our agent script for task %s", id)
	}
	// The kernel booted with the task's parameters on its command line.
	m := regexp.MustCompile(`(?m)Command line: (.*)$`).FindStringSubmatch(serial)
	if m == nil {
		t.Errorf("the serial log has no kernel command line (the kernel did not boot?)")
	} else {
		cmdline := m[1]
		for _, want := range []string{"lpmos.task=" + id, "lpmos.mac=" + mac, "lpmos.region=" + regionURL} {
			if !strings.Contains(cmdline, want) {
				t.Errorf("kernel command line lacks %q: %s", want, cmdline)
			}
		}
		if !regexp.MustCompile(`(^| )lpmos\.token=\S+`).MatchString(cmdline) {
			t.Errorf("kernel command line has no lpmos.token: %s", cmdline)
		}
	}
	// u-root's init ran the stand-in agent, and the kernel powered off.
	if !strings.Contains(serial, "lpmos placeholder agent") {
		t.Errorf("the serial log does not show the (stand-in) agent running")
	}
	if !strings.Contains(serial, "reboot: Power down") {
		t.Errorf("the serial log does not show the kernel powering off")
	}
	// The agent's last lines may not reach the serial port: it powers off
	// without waiting for the console to drain. Check them when they did.
	if m := regexp.MustCompile(`LPMOS-PLACEHOLDER modules loaded=(\d+) failed=(\d+)`).FindStringSubmatch(serial); m == nil {
		t.Logf("the agent's module report did not reach the serial console before power-off")
	} else if m[2] != "0" || m[1] == "0" {
		t.Errorf("the agent loaded %s kernel modules, %s failed", m[1], m[2])
	}
	if m := regexp.MustCompile(`LPMOS-PLACEHOLDER nics=(\S*) disks=(\S*)`).FindStringSubmatch(serial); m == nil {
		t.Logf("the agent's device report did not reach the serial console before power-off")
	} else if !strings.Contains(m[1], "eth0") || !strings.Contains(m[2], "vda") {
		t.Errorf("the agent did not see the VM's NIC and disk: nics=%s disks=%s", m[1], m[2])
	}

	// Fetching the script moved the task to booting.
	task := srv.task(id)
	if task["status"] != "booting" {
		t.Errorf("task status %v, want booting (timeline %v)", task["status"], statuses(task))
	}
	if t.Failed() {
		t.Logf("artifacts in %s; serial console tail:\n%s", testlab.ArtifactDir(t), testlab.Tail(serial, 40))
	}
	testlab.Logf(t, start, "done")
}
