package e2e_test

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/internal/redfishsim"
	"github.com/lpmos/lpmos/internal/testlab"
)

// TestRedfishZeroTouch is TestIPMIZeroTouch with a Redfish BMC and UEFI
// firmware: the test never starts the VM. The VM (OVMF, the lab's tap, a
// bootable image to install) sits behind the Redfish stand-in
// (internal/redfishsim) with its QEMU backend, which starts QEMU when the
// system is powered on and drives it over QMP. The test registers the
// machine with its BMC over REST (HTTPS, the BMC's certificate as the CA)
// and creates a task; the region sets the boot override to PXE once and
// powers the machine on over Redfish; QEMU starts with the NIC first in
// its boot order; the VM PXE-boots the agent, is approved over REST,
// installs the image and reboots. The override was "Once", spent by the
// power-on: the reboot boots the disk straight away (no second network
// boot, unlike the IPMI twin, whose machine always boots the network
// first), and the installed system phones home.
//
// Wiring: allinone (the region) runs in the lab's server namespace, so
// the stand-in's HTTPS listener is opened there (netns.NS.Listen: a
// socket keeps the namespace it was created in) and served by the test
// process, on that namespace's loopback. The machine command is the
// lab's QEMU command line in the VM namespace (ip netns exec); its QMP
// sockets are Unix sockets, the same path in every namespace.
func TestRedfishZeroTouch(t *testing.T) {
	uefi := scenario{firmware: lpmos.FirmwareUEFI, bootPath: pathUEFI}
	r := newRig(t, uefi, func(bootDir string) {
		zst, sum := testlab.BootableImageZstd(t)
		data, err := os.ReadFile(zst)
		if err != nil {
			t.Fatal(err)
		}
		publishImage(t, bootDir, installedOS, data, sum)
	})
	srv, mac := r.srv, testlab.DefaultMAC
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	// The machine's two boot orders: the NIC first for a PXE override,
	// the disk first otherwise (redfishsim.DiskFirst), one disk.
	disk := testlab.Disk(t, vmDiskSize)
	cmds := map[bool][]string{}
	var serialLog string
	for _, diskFirst := range []bool{false, true} {
		cmds[diskFirst], serialLog = r.lab.VMCommand(t, testlab.VMConfig{
			Firmware: uefi.firmware, MAC: mac, Memory: vmMemoryMiB, CPUs: vmCPUs,
			Disk: disk, Reboot: true, DiskFirst: diskFirst,
		})
	}
	var (
		mu     sync.Mutex
		starts []string // the boot override of each QEMU start
	)
	art, qdir := testlab.ArtifactDir(t), t.TempDir()
	q := &redfishsim.QEMU{Dir: qdir, NIC: testlab.NICID, Disk: testlab.DiskID,
		Command: func(boot string) []string {
			mu.Lock()
			starts = append(starts, boot)
			mu.Unlock()
			argv := cmds[redfishsim.DiskFirst(boot)]
			// The artifact qemu.cmd is the command line started last.
			_ = os.WriteFile(filepath.Join(art, "qemu.cmd"), []byte(strings.Join(argv, " ")+"\n"), 0o644)
			return argv
		}}
	t.Cleanup(func() {
		_ = q.Close()
		if b, err := os.ReadFile(filepath.Join(qdir, "qemu.log")); err == nil {
			_ = os.WriteFile(filepath.Join(art, "qemu.log"), b, 0o644)
		}
	})
	const user, password = "root", "e2e-redfish-pw"
	sim := redfishsim.New(redfishsim.Config{Username: user, Password: password}, q)
	l, err := r.lab.Server.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listening in the server namespace: %v", err)
	}
	hs := httptest.NewUnstartedServer(sim)
	hs.Listener.Close()
	hs.Listener = l
	hs.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS probes of nobody's concern
	hs.StartTLS()
	t.Cleanup(hs.Close) // before q.Close (cleanups run last first)
	bmcAddr := l.Addr().String()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: hs.Certificate().Raw})
	serial := func() string {
		b, _ := os.ReadFile(serialLog)
		return strings.NewReplacer("\r", "", "\n", "").Replace(string(b))
	}
	powered := func() bool {
		st, err := q.PowerState(ctx)
		if err != nil {
			t.Fatalf("the stand-in's machine state: %v", err)
		}
		return st == redfishsim.PowerOn
	}
	testlab.Logf(t, r.start, "Redfish stand-in listening on https://%s in the server namespace", bmcAddr)

	// The machine and its BMC, over REST, before the task: the region
	// powers a task's machine on when the task becomes ready.
	body, _ := json.Marshal(map[string]any{"mac": mac, "region": regionID,
		"bmc": map[string]any{"driver": "redfish", "address": bmcAddr, "username": user, "password": password, "ca_cert": string(caPEM)}})
	if code, resp := srv.api("POST", "/api/v1/machines", string(body)); code != 201 {
		t.Fatalf("registering the machine: %d %v", code, resp)
	}
	if powered() {
		t.Fatalf("the machine runs before anyone powered it on")
	}

	const hostname = "e2e-redfish"
	id := srv.createTaskWith(mac, installedOS, imageVersion, map[string]any{"tags": map[string]string{"hostname": hostname}})
	created := time.Now()
	for !powered() {
		if time.Since(created) > time.Minute {
			t.Fatalf("the region did not power the machine on within a minute; task %v", srv.task(id))
		}
		time.Sleep(100 * time.Millisecond)
	}
	pid := q.PID()
	testlab.Logf(t, r.start, "the region powered the machine on over Redfish %s after the task's creation (QEMU pid %d)",
		time.Since(created).Round(100*time.Millisecond), pid)
	// The process the stand-in started becomes (ip netns exec execs in
	// place) the lab's QEMU, in the VM namespace.
	var cmdline []byte
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cmdline, _ = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.HasPrefix(string(cmdline), "qemu-system-x86_64\x00") {
			break
		}
	}
	if !strings.HasPrefix(string(cmdline), "qemu-system-x86_64\x00") {
		t.Errorf("the machine process %d is %q, want QEMU", pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
	} else if !sameNetns(t, fmt.Sprintf("/proc/%d/ns/net", pid), r.lab.VM.Path()) {
		t.Errorf("the machine process %d does not run in the lab's VM namespace %s", pid, r.lab.VM)
	}
	mu.Lock()
	if len(starts) != 1 || starts[0] != "Pxe" {
		t.Errorf("the machine's starts (boot override at each power-on): %q, want [Pxe]", starts)
	}
	mu.Unlock()
	if got := sim.Resets(); len(got) != 1 || got[0] != "On" {
		t.Errorf("the BMC's resets %q, want [On]", got)
	}

	// alive fails the test if QEMU is gone or was restarted.
	alive := func(what string) {
		t.Helper()
		if p := q.PID(); p != pid {
			t.Fatalf("the machine stopped while %s (QEMU pid %d, was %d); serial tail:\n%s", what, p, pid, testlab.Tail(serial(), 5))
		}
	}
	wait := func(want string, timeout time.Duration) map[string]any {
		t.Helper()
		return waitWhileAlive(ctx, t, srv, id, want, timeout, alive)
	}
	task := wait("pending_approval", 3*time.Minute)
	testlab.Logf(t, r.start, "hardware reported %s after power-on", time.Since(created).Round(100*time.Millisecond))
	checkHardware(t, task["hardware"], mac)

	r.approve(t, id)
	wait("completed", 3*time.Minute)
	testlab.Logf(t, r.start, "installed; waiting for the installed system to phone home")

	firstBoot := waitFirstBoot(ctx, t, srv, id, alive)
	testlab.Logf(t, r.start, "first boot recorded: %v", firstBoot["message"])
	if msg, _ := firstBoot["message"].(string); !strings.Contains(msg, `"`+hostname+`"`) {
		t.Errorf("first_boot message %q does not name the seeded hostname %q", msg, hostname)
	}

	// The stand-in for cloud-init powers off after phoning home: QEMU
	// ends and the BMC reports the system off.
	for deadline := time.Now().Add(time.Minute); powered(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("the installed system did not power off after phoning home")
			break
		}
	}

	// The path: the BMC's power-on, OVMF's PXE, our agent script, the
	// install, the reboot in the same QEMU process straight to the disk
	// (the PXE override was spent by the power-on), the installed system.
	out := serial()
	for _, want := range []string{
		"LPMOS: booting the agent for task " + id,
		"LPMOS-FIRSTBOOT: phoned home",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the serial console does not show %q", want)
		}
	}
	if n := len(regexp.MustCompile(pathUEFI).FindAllString(out, -1)); n != 1 {
		t.Errorf("the serial console shows %d UEFI network boots (%s), want 1: the reboot after the install must boot the disk", n, pathUEFI)
	}
	if strings.Contains(out, "booting from the local disk") {
		t.Errorf("the machine network-booted after the install (the region's script sent it to its disk): the Once override applied to the reboot")
	}
	boots := sim.Boots()
	t.Logf("boots (override used by each power-on or reset): %q", boots)
	if len(boots) < 2 || boots[0] != "Pxe" || slices.Contains(boots[1:], "Pxe") {
		t.Errorf("the machine's boots %q: want Pxe at power-on, then reboots without it", boots)
	}
	if target, enabled := sim.Boot(); target == "Pxe" {
		t.Errorf("the BMC's boot override is %s/%s after completion, want no PXE", target, enabled)
	}

	// What the region did with the BMC, in the task's timeline and the
	// machine's record.
	task = srv.task(id)
	checkTimeline(t, task, []string{"pending", "ready", "booting", "pending_approval", "approved", "installing", "completed"},
		[]string{"partitioning", "downloading", "writing", "configuring"})
	var power []string
	tl, _ := task["timeline"].([]any)
	for _, e := range tl {
		if m, _ := e.(map[string]any); m["event"] == "power" {
			power = append(power, fmt.Sprint(m["message"]))
		}
	}
	t.Logf("power entries: %q", power)
	wantPower := []string{"next boot pxe, power on (cycle if on): done (power on)", "next boot disk: done (power on)"}
	if len(power) != len(wantPower) {
		t.Errorf("the timeline's power entries %q, want %d: %q", power, len(wantPower), wantPower)
	} else {
		for i, want := range wantPower {
			if !strings.HasSuffix(power[i], want) || !strings.Contains(power[i], "redfish://"+user+"@"+bmcAddr) {
				t.Errorf("power entry %d %q: want the BMC redfish://%s@%s and %q", i, power[i], user, bmcAddr, want)
			}
		}
	}
	code, rec := srv.api("GET", "/api/v1/machines/"+mac, "")
	if code != 200 {
		t.Fatalf("GET machine: %d %v", code, rec)
	}
	if p, _ := rec["power"].(map[string]any); p["state"] != "on" || p["action"] != "on" || p["ok"] != true {
		t.Errorf("the machine record's power %v, want state on after action on, ok", rec["power"])
	}
	if strings.Contains(fmt.Sprint(rec), password) {
		t.Errorf("the machine record shows the BMC password")
	}
	r.ws.waitStatuses(t, id, []string{"pending", "ready", "booting", "pending_approval", "approved", "installing", "completed"})
}
