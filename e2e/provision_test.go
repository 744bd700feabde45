package e2e_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/klauspost/compress/zstd"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent/initramfs"
	"github.com/lpmos/lpmos/internal/testlab"
)

const (
	imageOS      = "lpmos-e2e"
	imageVersion = "1"
	imageSize    = 8 << 20
	vmDiskSize   = 64 << 20
	vmMemoryMiB  = 768
	vmCPUs       = 2
)

// makeImage writes a small raw disk image with a GPT and one partition full
// of a known pattern, zstd-compressed, with its SHA256SUMS, into the region
// catalogue of bootDir, and returns the raw image's bytes.
func makeImage(t *testing.T, bootDir string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "image.raw")
	d, err := diskfs.Create(raw, imageSize, diskfs.SectorSize512)
	if err != nil {
		t.Fatal(err)
	}
	const first, last = 2048, imageSize/512 - 34 // the backup GPT takes the last 33 sectors
	table := &gpt.Table{LogicalSectorSize: 512, PhysicalSectorSize: 512, ProtectiveMBR: true,
		Partitions: []*gpt.Partition{{Index: 1, Start: first, End: last, Type: gpt.LinuxFilesystem, Name: "lpmos-e2e"}}}
	if err := d.Partition(table); err != nil {
		t.Fatal(err)
	}
	var pattern bytes.Buffer
	for i := 0; pattern.Len() < (last-first+1)*512; i++ {
		fmt.Fprintf(&pattern, "LPMOS-E2E block %08d\n", i)
	}
	if _, err := d.WritePartitionContents(1, bytes.NewReader(pattern.Bytes()[:(last-first+1)*512])); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(img) != imageSize || !bytes.Contains(img, []byte("LPMOS-E2E block 00000000\n")) {
		t.Fatalf("image: %d bytes, pattern missing", len(img))
	}

	var zst bytes.Buffer
	zw, err := zstd.NewWriter(&zst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(img); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(bootDir, "images", imageOS, imageVersion)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(zst.Bytes())
	if err := os.WriteFile(filepath.Join(dir, "image.raw.zst"), zst.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(hex.EncodeToString(sum[:])+"  image.raw.zst\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestBIOSProvisionsImage is the whole product on one VM: it PXE-boots
// (SeaBIOS + iPXE) into the real agent, which reports the VM's hardware; the
// test checks it against the QEMU command line and approves the task through
// the REST API; the agent writes the region's image onto the VM's disk, and
// the test compares the disk with the image byte for byte.
func TestBIOSProvisionsImage(t *testing.T) {
	start := time.Now()
	lab := testlab.New(t)
	kernelDir := testlab.Kernel(t, initramfs.DefaultAgent)
	bootDir := testlab.BootDir(t, kernelDir)
	img := makeImage(t, bootDir)
	testlab.Logf(t, start, "lab up, agent boot files and image ready")
	srv := startAllinone(t, lab, bootDir)
	testlab.Logf(t, start, "allinone ready")

	mac := testlab.DefaultMAC
	id := srv.createTask(mac, imageOS, imageVersion)
	srv.waitStatus(id, "ready", 30*time.Second)
	disk := testlab.Disk(t, vmDiskSize)
	vm := lab.StartVM(context.Background(), t, testlab.VMConfig{
		Firmware: lpmos.FirmwareBIOS, MAC: mac, Memory: vmMemoryMiB, CPUs: vmCPUs, Disk: disk, Timeout: 3 * time.Minute,
	})
	defer func() {
		if t.Failed() {
			t.Logf("artifacts in %s; serial console tail:\n%s", testlab.ArtifactDir(t),
				testlab.Tail(strings.ReplaceAll(vm.Serial(), "\r", ""), 40))
		}
	}()

	task := waitStatusWhileVM(t, srv, vm, id, "pending_approval", 2*time.Minute)
	hw, _ := task["hardware"].(map[string]any)
	testlab.Logf(t, start, "hardware reported: cpu %v, memory %v, disks %v, network %v", hw["cpu"], hw["memory"], hw["disks"], hw["network"])
	checkHardware(t, task["hardware"], mac)

	code, body := srv.api("PUT", "/api/v1/tasks/"+id+"/approve", `{"approved":true,"notes":"e2e"}`)
	if code/100 != 2 {
		t.Fatalf("approve: %d %v", code, body)
	}
	task = waitStatusWhileVM(t, srv, vm, id, "completed", 2*time.Minute)
	testlab.Logf(t, start, "task completed (timeline %v), progress %v", statuses(task), task["progress"])
	if p, _ := task["progress"].(map[string]any); p["stage"] != "completed" || p["percentage"] != float64(100) {
		t.Errorf("final progress %v, want stage completed at 100%%", task["progress"])
	}

	// The agent is done with the disk; let the VM power off, or stop it.
	select {
	case <-vm.Done():
	case <-time.After(15 * time.Second):
	}
	res := vm.Stop()
	testlab.Logf(t, start, "QEMU ended after %s: %v", res.Duration.Round(100*time.Millisecond), res.Err)

	got, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != vmDiskSize {
		t.Fatalf("the disk is %d bytes, want %d", len(got), vmDiskSize)
	}
	if !bytes.Equal(got[:imageSize], img) {
		i := 0
		for i < imageSize && got[i] == img[i] {
			i++
		}
		t.Errorf("the disk's first %d bytes differ from the image, first at offset %d", imageSize, i)
	}
	if !bytes.Equal(got[imageSize:], make([]byte, vmDiskSize-imageSize)) {
		t.Errorf("the disk beyond the image is not zero")
	}
	testlab.Logf(t, start, "disk checked")
}

// waitStatusWhileVM is waitStatus that fails at once if the VM stops first.
func waitStatusWhileVM(t *testing.T, srv *server, vm *testlab.VM, id, want string, timeout time.Duration) map[string]any {
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
		select {
		case <-vm.Done():
			t.Fatalf("the VM stopped (%v) while task %s was %s, waiting for %s", vm.Wait().Err, id, st, want)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s did not reach %s within %s: status %s, timeline %v", id, want, timeout, st, statuses(task))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkHardware compares the agent's report with what QEMU was given.
func checkHardware(t *testing.T, hw any, mac string) {
	t.Helper()
	h, _ := hw.(map[string]any)
	if h == nil {
		t.Fatalf("the task has no hardware report")
	}
	num := func(m any, key string) float64 {
		mm, _ := m.(map[string]any)
		f, _ := mm[key].(float64)
		return f
	}
	if threads := num(h["cpu"], "threads"); threads != vmCPUs {
		t.Errorf("CPU threads %v, want %d (cpu: %v)", threads, vmCPUs, h["cpu"])
	}
	// The kernel keeps some memory for itself; what it reports is a bit
	// less than what the VM has, never more.
	mem := num(h["memory"], "total_bytes")
	if mem > vmMemoryMiB<<20 || mem < 0.8*(vmMemoryMiB<<20) {
		t.Errorf("memory %v bytes, want about %d MiB (memory: %v)", mem, vmMemoryMiB, h["memory"])
	}
	var disks []string
	found := false
	list, _ := h["disks"].([]any)
	for _, d := range list {
		disks = append(disks, fmt.Sprint(d))
		if num(d, "size_bytes") == vmDiskSize {
			found = true
		}
	}
	if !found {
		t.Errorf("no disk of %d bytes in the report: %v", vmDiskSize, disks)
	}
	found = false
	nics, _ := h["network"].([]any)
	for _, n := range nics {
		if m, _ := n.(map[string]any); m != nil && strings.EqualFold(fmt.Sprint(m["mac"]), mac) {
			found = true
		}
	}
	if !found {
		t.Errorf("no NIC with MAC %s in the report: %v", mac, nics)
	}
}
