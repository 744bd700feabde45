package e2e_test

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/internal/testlab"
)

var bios = scenario{firmware: lpmos.FirmwareBIOS, bootPath: pathBIOS}

// taskError returns the task's error object.
func taskError(task map[string]any) map[string]any {
	e, _ := task["error"].(map[string]any)
	return e
}

// TestChecksumMismatchFailsTask: the region's SHA256SUMS does not match
// the image it serves. The agent writes the stream (it can only verify at
// its end), finds the mismatch, zeroes the disk's first MiB so the corrupt
// image cannot boot, and the task fails with the stage and the reason.
func TestChecksumMismatchFailsTask(t *testing.T) {
	const badOS = "lpmos-e2e-bad"
	r := newRig(t, bios, func(bootDir string) { makeImage(t, bootDir, badOS, true) })
	srv := r.srv
	m, _ := r.bootForTask(t, bios, badOS, map[string]string{"cloud_init": "off"}, testlab.VMConfig{})
	id, vm, disk := m.id, m.vm, m.disk
	r.approve(t, id)
	task := waitStatusWhileVM(t, srv, vm, id, "failed", 3*time.Minute)
	vm.Stop()
	e := taskError(task)
	testlab.Logf(t, r.start, "task failed: %v", e)
	if e["code"] != "checksum_mismatch" || e["stage"] != "writing" {
		t.Errorf("task error %v, want code checksum_mismatch at stage writing", e)
	}
	if msg, _ := e["message"].(string); !strings.Contains(msg, "first MiB has been zeroed") {
		t.Errorf("the error message does not say the disk was made unbootable: %q", msg)
	}
	got, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:1<<20], make([]byte, 1<<20)) {
		t.Errorf("the disk's first MiB (partition table, boot code) was not zeroed after the mismatch")
	}
	checkTimeline(t, srv.task(id), []string{"pending", "ready", "booting", "pending_approval", "approved", "installing", "failed"},
		[]string{"partitioning", "downloading", "writing", "configuring"}) // verified after the flush
	r.ws.waitStatuses(t, id, []string{"pending", "ready", "booting", "pending_approval", "approved", "installing", "failed"})
}

// TestRejectPowersOff: the operator rejects the hardware; the agent, long
// polling for the decision, is told to stop and powers the VM off (the
// kernel's power-down, not a reboot). The disk is untouched.
func TestRejectPowersOff(t *testing.T) {
	r := newRig(t, bios, func(bootDir string) { makeImage(t, bootDir, imageOS, false) })
	srv := r.srv
	m, _ := r.bootForTask(t, bios, imageOS, map[string]string{"cloud_init": "off"}, testlab.VMConfig{})
	id, vm, disk := m.id, m.vm, m.disk
	rejected := time.Now()
	select {
	case <-vm.Done():
		t.Fatalf("the VM stopped before the rejection: %v", vm.Wait().Err)
	default:
	}
	if code, body := srv.api("PUT", "/api/v1/tasks/"+id+"/reject", `{"reason":"e2e: not this machine"}`); code/100 != 2 {
		t.Fatalf("reject: %d %v", code, body)
	}
	select {
	case <-vm.Done():
	case <-time.After(90 * time.Second):
		t.Fatalf("the VM did not power off within 90 s of the rejection")
	}
	res := vm.Wait()
	testlab.Logf(t, r.start, "the VM powered off %s after the rejection", time.Since(rejected).Round(time.Millisecond))
	if res.Err != nil || res.TimedOut {
		t.Errorf("QEMU did not exit cleanly: %v (timed out: %v)", res.Err, res.TimedOut)
	}
	serial := strings.ReplaceAll(res.Serial, "\r", "")
	if !strings.Contains(serial, "reboot: Power down") {
		t.Errorf("the kernel did not power down (a reboot would also end QEMU with -no-reboot)")
	}
	got, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, len(got))) {
		t.Errorf("a rejected machine's disk was written to")
	}
	task := srv.task(id)
	if task["status"] != "rejected" {
		t.Errorf("task status %v, want rejected", task["status"])
	}
	checkTimeline(t, task, []string{"pending", "ready", "booting", "pending_approval", "rejected"}, nil)
	r.ws.waitStatuses(t, id, []string{"pending", "ready", "booting", "pending_approval", "rejected"})
}

// TestKilledVMTimesOut: the VM dies in the middle of writing the image (a
// throttled disk keeps the install going long enough); the agent's
// progress stops and the region fails the task when the installing
// timeout (10 s here, --task-timeouts) passes.
func TestKilledVMTimesOut(t *testing.T) {
	r := newRig(t, bios, func(bootDir string) { makeImage(t, bootDir, imageOS, false) }, "--task-timeouts", "installing=10s")
	srv := r.srv
	m, _ := r.bootForTask(t, bios, imageOS, map[string]string{"cloud_init": "off"}, testlab.VMConfig{DiskWriteBps: 512 << 10})
	id, vm := m.id, m.vm
	r.approve(t, id)
	// Kill the VM once the agent reports writing.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		task := srv.task(id)
		p, _ := task["progress"].(map[string]any)
		if task["status"] == "installing" && p["stage"] == "writing" {
			testlab.Logf(t, r.start, "writing (%v%%): killing the VM", p["percentage"])
			break
		}
		if task["status"] == "completed" || task["status"] == "failed" || time.Now().After(deadline) {
			t.Fatalf("the install was not caught writing: status %v, progress %v", task["status"], p)
		}
		time.Sleep(100 * time.Millisecond)
	}
	vm.Stop()
	killed := time.Now()
	task := srv.waitStatus(id, "failed", 90*time.Second)
	testlab.Logf(t, r.start, "task failed %s after the VM was killed: %v", time.Since(killed).Round(100*time.Millisecond), task["error"])
	if e := taskError(task); e["code"] != "timeout" {
		t.Errorf("task error %v, want code timeout", e)
	}
	r.ws.waitStatuses(t, id, []string{"pending", "ready", "booting", "pending_approval", "approved", "installing", "failed"})
}
