package e2e_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/internal/testlab"
)

const installedOS = "lpmos-e2e-os"

// TestInstalledSystemPhonesHome follows a machine past the install: the
// image is a bootable disk (MBR, syslinux, Debian's kernel and a tiny init
// standing in for cloud-init, internal/testlab.BootableImage). The agent
// writes it and a cloud-init NoCloud seed (hostname and the region's
// phone-home URL) in a new partition; the VM reboots, the region sends it
// to its local disk, the installed system boots, reads the seed, phones
// home, and the task's timeline gets its first_boot entry.
func TestInstalledSystemPhonesHome(t *testing.T) { installedSystemPhonesHome(t, bios, nil) }

// staticAddress is the installed system's address in
// TestInstalledSystemStaticNetwork: in the lab's subnet, outside the
// region's DHCP range.
const staticAddress = "10.99.0.50/24"

// TestInstalledSystemStaticNetwork gives the task a static network: the
// region renders it as the seed's network-config, the agent writes it into
// the CIDATA partition, and the installed system (the test image's
// stand-in for cloud-init) configures the address from it instead of
// DHCP and phones home from there.
func TestInstalledSystemStaticNetwork(t *testing.T) {
	installedSystemPhonesHome(t, bios, map[string]any{
		"network": map[string]any{"mode": "static", "address": staticAddress, "gateway": testlab.ServerIP, "dns": []string{testlab.ServerIP}},
	})
}

// TestInstalledSystemPhonesHomeUEFI is the same under OVMF: after the
// install the region's script exits iPXE and the firmware boots the disk's
// EFI system partition (syslinux.efi).
func TestInstalledSystemPhonesHomeUEFI(t *testing.T) {
	installedSystemPhonesHome(t, scenario{firmware: lpmos.FirmwareUEFI, bootPath: pathUEFI}, nil)
}

// installedSystemPhonesHome installs the bootable image for a task with
// the hostname tag and fields (more of the create request) and follows
// the installed system to its first boot.
func installedSystemPhonesHome(t *testing.T, sc scenario, fields map[string]any) {
	var img []byte
	r := newRig(t, sc, func(bootDir string) {
		zst, sum := testlab.BootableImageZstd(t)
		data, err := os.ReadFile(zst)
		if err != nil {
			t.Fatal(err)
		}
		publishImage(t, bootDir, installedOS, data, sum)
		if img, err = os.ReadFile(testlab.BootableImage(t)); err != nil {
			t.Fatal(err)
		}
	})
	srv := r.srv
	const hostname = "e2e-installed"
	create := map[string]any{"tags": map[string]string{"hostname": hostname}}
	for k, v := range fields {
		create[k] = v
	}
	_, static := fields["network"]
	m, _ := r.bootForTaskWith(t, sc, installedOS, create, testlab.VMConfig{Reboot: true, Timeout: 6 * time.Minute})
	id, vm, disk := m.id, m.vm, m.disk
	r.approve(t, id)
	task := waitStatusWhileVM(t, srv, vm, id, "completed", 3*time.Minute)
	completed := time.Now()
	p, _ := task["progress"].(map[string]any)
	details, _ := p["details"].(map[string]any)
	if ci, _ := details["cloud_init"].(string); !strings.HasPrefix(ci, "seeded") {
		t.Errorf("the final progress details say cloud_init %q, want seeded (details %v)", ci, details)
	}
	testlab.Logf(t, r.start, "installed; waiting for the installed system to phone home")

	var firstBoot map[string]any
	deadline := time.Now().Add(3 * time.Minute)
	for firstBoot == nil {
		tl, _ := srv.task(id)["timeline"].([]any)
		for _, e := range tl {
			if m, _ := e.(map[string]any); m["event"] == "first_boot" {
				firstBoot = m
			}
		}
		if firstBoot != nil {
			break
		}
		select {
		case <-vm.Done():
			t.Fatalf("the VM stopped (%v) before the installed system phoned home", vm.Wait().Err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no first_boot in the task's timeline within 3 minutes of completion")
		}
		time.Sleep(250 * time.Millisecond)
	}
	toFirstBoot := time.Since(completed)
	testlab.Logf(t, r.start, "first boot recorded %s after completion: %v", toFirstBoot.Round(100*time.Millisecond), firstBoot["message"])
	t.Logf("E2E-TIMING mode=%s-firstboot completed_to_first_boot=%.1f", sc.name(), toFirstBoot.Seconds())
	if msg, _ := firstBoot["message"].(string); !strings.Contains(msg, `"`+hostname+`"`) {
		t.Errorf("first_boot message %q does not name the seeded hostname %q", msg, hostname)
	}
	if ip, _, _ := strings.Cut(staticAddress, "/"); static {
		if msg, _ := firstBoot["message"].(string); !strings.Contains(msg, "from "+ip) {
			t.Errorf("first_boot message %q: want it from the static address %s", msg, ip)
		}
	}
	// The stand-in powers off after phoning home.
	select {
	case <-vm.Done():
	case <-time.After(time.Minute):
		t.Errorf("the installed system did not power off after phoning home")
	}
	res := vm.Stop()
	serial := strings.NewReplacer("\r", "", "\n", "").Replace(res.Serial)
	wants := []string{
		"is installed (task " + id + " completed), booting from the local disk",
		"LPMOS-FIRSTBOOT: phoned home",
	}
	if static {
		// The address came from the seed's network-config, not DHCP.
		wants = append(wants, "LPMOS-FIRSTBOOT: network up (static): ")
		if !regexp.MustCompile(`LPMOS-FIRSTBOOT: network up \(static\): \S+ ` + regexp.QuoteMeta(staticAddress)).MatchString(serial) {
			t.Errorf("the serial console does not show the static address %s", staticAddress)
		}
	} else {
		wants = append(wants, "LPMOS-FIRSTBOOT: network up: ")
	}
	for _, want := range wants {
		if !strings.Contains(serial, want) {
			t.Errorf("the serial console does not show %q", want)
		}
	}

	// The disk: the image's partition untouched, plus the seed partition.
	got, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	parts := sfdiskParts(t, disk)
	imgParts := sfdiskParts(t, testlab.BootableImage(t))
	if len(imgParts) != 1 || len(parts) != 2 {
		t.Fatalf("partitions: image %v, disk %v; want the image's one plus the seed", imgParts, parts)
	}
	p1, seed := parts[0], parts[1]
	if p1.Start != imgParts[0].Start || p1.Size != imgParts[0].Size || p1.Type != imgParts[0].Type {
		t.Errorf("partition 1 %+v differs from the image's %+v", p1, imgParts[0])
	}
	if a, b := p1.Start*512, (p1.Start+p1.Size)*512; !bytes.Equal(got[a:b], img[a:b]) {
		t.Errorf("partition 1's content differs from the image's")
	}
	if seed.Start < p1.Start+p1.Size || seed.Start%2048 != 0 {
		t.Errorf("seed partition %+v: want 1 MiB aligned after partition 1 %+v", seed, p1)
	}
	// The seed has a network-config exactly when the task's network
	// needs one.
	mtype := exec.Command("mtype", "-i", fmt.Sprintf("%s@@%d", disk, seed.Start*512), "::network-config")
	mtype.Env = append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	nc, err := mtype.CombinedOutput()
	switch {
	case static && err != nil:
		t.Errorf("the seed has no network-config: %v: %s", err, nc)
	case static && !strings.Contains(string(nc), `"`+staticAddress+`"`):
		t.Errorf("the seed's network-config does not hold %s:\n%s", staticAddress, nc)
	case !static && err == nil:
		t.Errorf("a DHCP task's seed has a network-config:\n%s", nc)
	}
	checkTimeline(t, srv.task(id), []string{"pending", "ready", "booting", "pending_approval", "approved", "installing", "completed"},
		[]string{"partitioning", "downloading", "writing", "configuring"})
	r.ws.waitStatuses(t, id, []string{"pending", "ready", "booting", "pending_approval", "approved", "installing", "completed"})
}

type sfdiskPart struct {
	Start int64  `json:"start"`
	Size  int64  `json:"size"`
	Type  string `json:"type"`
}

// sfdiskParts lists a disk image's partitions as sfdisk reads them.
func sfdiskParts(t *testing.T, path string) []sfdiskPart {
	t.Helper()
	out, err := exec.Command("sfdisk", "--json", path).Output()
	if err != nil {
		t.Fatalf("sfdisk --json %s (Debian package fdisk; ./scripts/test.sh installs it): %v", path, err)
	}
	var pt struct {
		PartitionTable struct {
			Partitions []sfdiskPart `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &pt); err != nil {
		t.Fatalf("sfdisk --json: %v: %s", err, out)
	}
	return pt.PartitionTable.Partitions
}
