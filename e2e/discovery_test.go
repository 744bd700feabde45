package e2e_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lpmos/lpmos/internal/testlab"
)

// TestDiscoveryInventoriesAnUnknownMachine is MAAS's enlistment with a
// real machine: a BIOS VM that LPMOS has never heard of (no task, no
// record) PXE-boots from a region run with --unknown-machines discover.
// It gets the agent in inventory mode, reports its hardware into a new
// machine record and powers itself off; no task is made. Booted again,
// it is sent to its disk with a message saying why.
func TestDiscoveryInventoriesAnUnknownMachine(t *testing.T) {
	r := newRig(t, bios, func(string) {}, "--unknown-machines", "discover")
	srv, mac := r.srv, testlab.DefaultMAC
	cfg := testlab.VMConfig{Firmware: bios.firmware, MAC: mac, Memory: vmMemoryMiB, CPUs: vmCPUs,
		Disk: testlab.Disk(t, vmDiskSize), Timeout: 3 * time.Minute}

	res := r.lab.RunVM(context.Background(), t, cfg)
	if res.TimedOut || res.Err != nil {
		t.Fatalf("the unknown machine did not power itself off after its inventory (timed out: %v, %v); serial tail:\n%s",
			res.TimedOut, res.Err, testlab.Tail(strings.ReplaceAll(res.Serial, "\r", ""), 40))
	}
	testlab.Logf(t, r.start, "the VM inventoried itself and powered off after %s", res.Duration.Round(time.Second))
	console := strings.NewReplacer("\r", "", "\n", "").Replace(res.Serial)
	if !strings.Contains(console, "LPMOS: booting the agent for inventory (no task)") {
		t.Errorf("the serial console does not show the agent booted in inventory mode")
	}

	code, m := srv.api("GET", "/api/v1/machines/"+mac, "")
	if code != 200 {
		t.Fatalf("GET the discovered machine: %d %v", code, m)
	}
	if m["registered"] != false {
		t.Errorf("a discovered machine is not registered: %v", m["registered"])
	}
	if m["region"] != regionID {
		t.Errorf("region %v, want %s", m["region"], regionID)
	}
	rep, _ := m["last_report"].(map[string]any)
	hw, _ := rep["hardware"].(map[string]any)
	if hw == nil {
		t.Fatalf("no hardware in the machine record: %v", m)
	}
	if tid, _ := rep["task_id"].(string); tid != "" {
		t.Errorf("the inventory report names task %s", tid)
	}
	cpu, _ := hw["cpu"].(map[string]any)
	if cores, _ := cpu["cores"].(float64); int(cores) != vmCPUs {
		t.Errorf("reported %v cores, the VM has %d", cpu["cores"], vmCPUs)
	}
	memory, _ := hw["memory"].(map[string]any)
	if b, _ := memory["total_bytes"].(float64); b < vmMemoryMiB<<20/2 || b > vmMemoryMiB<<20 {
		t.Errorf("reported %v bytes of memory, the VM has %d MiB", memory["total_bytes"], vmMemoryMiB)
	}
	disks, _ := hw["disks"].([]any)
	if len(disks) != 1 {
		t.Errorf("reported %d disks, the VM has 1", len(disks))
	}
	if code, list := srv.api("GET", "/api/v1/tasks?mac="+mac, ""); code != 200 || list["total"] != 0.0 {
		t.Errorf("discovery made a task: %d %v", code, list)
	}

	// Its next network boot goes to its disk (the region discovers a
	// machine once), saying why.
	vm := r.lab.StartVM(context.Background(), t, cfg)
	waitSerial(t, vm, "has no task and was inventoried already", 2*time.Minute)
	vm.Stop()
	testlab.Logf(t, r.start, "booted again: sent to its disk")
}
