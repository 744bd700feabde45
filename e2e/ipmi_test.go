package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lpmos/lpmos/internal/ipmisim"
	"github.com/lpmos/lpmos/internal/testlab"
)

// TestIPMIZeroTouch is zero touch with a BMC: the test never starts the
// VM. The VM (SeaBIOS with iPXE, the lab's tap, a bootable image to
// install) sits behind OpenIPMI's ipmi_sim as its BMC, which starts QEMU
// when the chassis is powered on and gives the guest a KCS interface
// (QEMU's ipmi-bmc-extern). The test registers the machine with its BMC
// over REST and creates a task; the region sets the next boot to PXE and
// powers the machine on over IPMI-over-LAN; the VM PXE-boots the agent,
// is approved over REST, installs the image, reboots to its disk and the
// installed system phones home.
//
// Wiring: allinone (the region) runs in the lab's server namespace, so
// ipmi_sim does too, its RMCP+ port on that namespace's loopback, where
// the region reaches it. The machine command is the lab's QEMU command
// line in the VM namespace (ip netns exec); QEMU's BMC chardev reaches
// ipmi_sim's serial port through a Unix socket the test process relays
// into the server namespace.
func TestIPMIZeroTouch(t *testing.T) {
	r := newRig(t, bios, func(bootDir string) {
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

	sock := filepath.Join(t.TempDir(), "bmc.sock")
	argv, serialLog := r.lab.VMCommand(t, testlab.VMConfig{
		Firmware: bios.firmware, MAC: mac, Memory: vmMemoryMiB, CPUs: vmCPUs,
		Disk: testlab.Disk(t, vmDiskSize), Reboot: true, Extra: ipmisim.QEMUDevices(sock),
	})
	sim := ipmisim.Start(t, ipmisim.Config{NS: r.lab.Server, Machine: argv, SerialSocket: sock})
	serial := func() string {
		b, _ := os.ReadFile(serialLog)
		return strings.NewReplacer("\r", "", "\n", "").Replace(string(b))
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("artifacts in %s; BMC:\n%s", testlab.ArtifactDir(t), testlab.Tail(sim.Log(), 40))
		}
		_ = os.WriteFile(filepath.Join(testlab.ArtifactDir(t), "ipmi_sim.log"), []byte(sim.Log()), 0o644)
	})
	testlab.Logf(t, r.start, "ipmi_sim listening on %s in the server namespace", sim.Addr)

	// The machine and its BMC, over REST, before the task: the region
	// powers a task's machine on when the task becomes ready.
	body, _ := json.Marshal(map[string]any{"mac": mac, "region": regionID,
		"bmc": map[string]any{"driver": "ipmi", "address": sim.Addr, "username": sim.Username, "password": sim.Password}})
	if code, resp := srv.api("POST", "/api/v1/machines", string(body)); code != 201 {
		t.Fatalf("registering the machine: %d %v", code, resp)
	}
	if sim.MachinePID() != 0 {
		t.Fatalf("the machine runs before anyone powered it on")
	}

	const hostname = "e2e-ipmi"
	id := srv.createTaskWith(mac, installedOS, imageVersion, map[string]any{"tags": map[string]string{"hostname": hostname}})
	created := time.Now()
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	err := sim.WaitMachine(wctx, true)
	wcancel()
	if err != nil {
		t.Fatalf("the region did not power the machine on: %v; task %v", err, srv.task(id))
	}
	pid := sim.MachinePID()
	testlab.Logf(t, r.start, "the region powered the machine on over IPMI %s after the task's creation (QEMU pid %d)",
		time.Since(created).Round(100*time.Millisecond), pid)
	// The process ipmi_sim started becomes (setsid, ip netns exec: each
	// execs in place) the lab's QEMU, in the VM namespace.
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
	if got := sim.Starts(); len(got) != 1 || got[0] != "pxe" {
		t.Errorf("the machine's starts (boot override at each power-on): %q, want [pxe]", got)
	}

	// alive fails the test if QEMU is gone.
	alive := func(what string) {
		t.Helper()
		if !ipmisim.Alive(pid) {
			t.Fatalf("the machine stopped while %s; serial tail:\n%s", what, testlab.Tail(serial(), 5))
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

	// The stand-in for cloud-init powers off after phoning home: the QEMU
	// process ends and the BMC's chassis is off.
	sctx, scancel := context.WithTimeout(ctx, time.Minute)
	err = sim.WaitMachine(sctx, false)
	scancel()
	if err != nil {
		t.Errorf("the installed system did not power off after phoning home: %v", err)
	}
	if n := sim.SerialConnections(); n < 1 {
		t.Errorf("QEMU's BMC device (ipmi-bmc-extern) never connected to the simulator")
	}

	// The path: the BMC's power-on, SeaBIOS's iPXE ROM, our agent
	// script, the install, the reboot in the same QEMU process, the
	// region's script sending it to its disk, the installed system.
	out := serial()
	for _, want := range []string{
		"LPMOS: booting the agent for task " + id,
		"is installed (task " + id + " completed), booting from the local disk",
		"LPMOS-FIRSTBOOT: phoned home",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the serial console does not show %q", want)
		}
	}
	if !regexp.MustCompile(pathBIOS).MatchString(out) {
		t.Errorf("the serial console does not show the BIOS network boot path (%s)", pathBIOS)
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
			if !strings.HasSuffix(power[i], want) || !strings.Contains(power[i], sim.Addr) {
				t.Errorf("power entry %d %q: want the BMC %s and %q", i, power[i], sim.Addr, want)
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
	if next := sim.NextBoot(); next != "disk" {
		t.Errorf("the BMC's next boot is %q after completion, want disk", next)
	}
	r.ws.waitStatuses(t, id, []string{"pending", "ready", "booting", "pending_approval", "approved", "installing", "completed"})
}

// sameNetns reports whether two paths (/proc/PID/ns/net, /run/netns/NAME)
// are the same network namespace.
func sameNetns(t *testing.T, a, b string) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Stat(a, &sa); err != nil {
		t.Fatalf("stat %s: %v", a, err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		t.Fatalf("stat %s: %v", b, err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// waitWhileAlive waits until task id has status want, failing the test if
// it ends otherwise, if alive (the BMC's machine still runs) fails, or at
// the timeout.
func waitWhileAlive(ctx context.Context, t *testing.T, srv *server, id, want string, timeout time.Duration, alive func(what string)) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		task := srv.task(id)
		st, _ := task["status"].(string)
		if st == want {
			return task
		}
		switch st {
		case "failed", "rejected", "cancelled", "completed":
			t.Fatalf("task %s ended %s while waiting for %s: error %v, timeline %v", id, st, want, task["error"], statuses(task))
		}
		alive("waiting for " + want)
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("task %s did not reach %s within %s: status %s, timeline %v", id, want, timeout, st, statuses(task))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitFirstBoot waits for the first_boot entry the installed system's
// phone-home adds to task id's timeline, while alive holds.
func waitFirstBoot(ctx context.Context, t *testing.T, srv *server, id string, alive func(what string)) map[string]any {
	t.Helper()
	for {
		tl, _ := srv.task(id)["timeline"].([]any)
		for _, e := range tl {
			if m, _ := e.(map[string]any); m["event"] == "first_boot" {
				return m
			}
		}
		alive("waiting for first_boot")
		if ctx.Err() != nil {
			t.Fatalf("no first_boot in the task's timeline")
		}
		time.Sleep(250 * time.Millisecond)
	}
}
