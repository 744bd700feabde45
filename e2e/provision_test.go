package e2e_test

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/agent/initramfs"
	"github.com/lpmos/lpmos/internal/netns"
	"github.com/lpmos/lpmos/internal/testimage"
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
// catalogue of bootDir as OS osName (version imageVersion), and returns the
// raw image's bytes. With badSum, SHA256SUMS lies about the image.
func makeImage(t *testing.T, bootDir, osName string, badSum bool) []byte {
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
	zst := testimage.Compress(t, "zstd", img)
	sum := sha256.Sum256(zst)
	if badSum {
		sum[0] ^= 0xff
	}
	publishImage(t, bootDir, osName, zst, hex.EncodeToString(sum[:]))
	return img
}

func sha256hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// publishImage puts a zstd image and its SHA256SUMS line into the region's
// catalogue (images/{os}/{version}/).
func publishImage(t *testing.T, bootDir, osName string, zst []byte, sum string) {
	t.Helper()
	dir := filepath.Join(bootDir, "images", osName, imageVersion)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "image.raw.zst"), zst, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(sum+"  image.raw.zst\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// scenario is one way of network-booting the VM.
type scenario struct {
	firmware lpmos.Firmware
	// proxy: a site DHCP server (dnsmasq) hands out the addresses and our
	// region answers as a ProxyDHCP server; otherwise our DHCP does both.
	proxy bool
	// bootPath matches the serial log when the firmware took its own boot
	// path (OVMF silently falls from PXE through to HTTP boot).
	bootPath string
}

func (sc scenario) name() string {
	if sc.proxy {
		return string(sc.firmware) + "+proxydhcp"
	}
	return string(sc.firmware)
}

const (
	pathBIOS     = `iPXE \(PCI [0-9a-f:.]*\) starting execution`
	pathUEFI     = `starting Boot[0-9A-F]* "UEFI PXEv4`
	pathUEFIHTTP = `starting Boot[0-9A-F]* "UEFI HTTPv4`
)

// TestProvisionBIOS: SeaBIOS with iPXE in the NIC ROM, our DHCP in full
// mode, /boot/{mac}.ipxe, kernel and initramfs over HTTP, the agent.
func TestProvisionBIOS(t *testing.T) {
	provision(t, scenario{firmware: lpmos.FirmwareBIOS, bootPath: pathBIOS})
}

// TestProvisionUEFI: OVMF's own PXE (no iPXE ROM), snponly.efi over our
// TFTP, then iPXE as on BIOS.
func TestProvisionUEFI(t *testing.T) {
	provision(t, scenario{firmware: lpmos.FirmwareUEFI, bootPath: pathUEFI})
}

// TestProvisionUEFIHTTP: OVMF's HTTP boot (PXE off); our DHCP answers the
// HTTPClient vendor class with the URL of snponly.efi.
func TestProvisionUEFIHTTP(t *testing.T) {
	provision(t, scenario{firmware: lpmos.FirmwareUEFIHTTP, bootPath: pathUEFIHTTP})
}

// TestProvisionProxyDHCP: the site's DHCP server (dnsmasq) gives the VM its
// address and knows nothing of network boot; our region, in proxy mode
// beside it, gives the boot information.
func TestProvisionProxyDHCP(t *testing.T) {
	provision(t, scenario{firmware: lpmos.FirmwareBIOS, proxy: true, bootPath: pathBIOS})
}

// rig is a lab with allinone serving the real agent and the test images.
type rig struct {
	start   time.Time
	lab     *testlab.Lab
	srv     *server
	bootDir string
	ws      *wsWatch
	site    *netns.Proc
}

// newRig sets up the lab for sc and the agent's boot files, lets images
// put the test's OS images into the boot directory (the region reads its
// catalogue at start), starts allinone (with extra flags), and connects a
// WebSocket client before any task exists.
func newRig(t *testing.T, sc scenario, images func(bootDir string), extra ...string) *rig {
	t.Helper()
	r := &rig{start: time.Now(), lab: testlab.New(t)}
	if ipv6Router() {
		r.lab.StartIPv6Router()
	}
	if sc.proxy {
		r.site = r.lab.StartSiteDHCP()
		extra = append([]string{"--dhcp-mode", "proxy"}, extra...)
	}
	r.bootDir = testlab.BootDir(t, testlab.Kernel(t, initramfs.DefaultAgent))
	images(r.bootDir)
	testlab.Logf(t, r.start, "lab up, agent boot files and images ready")
	r.srv = startAllinone(t, r.lab, r.bootDir, extra...)
	r.ws = r.srv.watch()
	testlab.Logf(t, r.start, "allinone ready, WebSocket client subscribed")
	return r
}

// machine is one VM booted for a task.
type machine struct {
	id      string // the task
	disk    string // the VM's disk file
	vm      *testlab.VM
	powerOn time.Time
}

// bootForTask creates a task for the VM's MAC to install osName (with
// tags), boots the VM of the scenario (cfg: disk and MAC are filled in)
// once the task is ready, and waits for the agent's hardware report. If
// the test fails, the serial console's tail is logged.
func (r *rig) bootForTask(t *testing.T, sc scenario, osName string, tags map[string]string, cfg testlab.VMConfig) (machine, map[string]any) {
	t.Helper()
	return r.bootForTaskWith(t, sc, osName, map[string]any{"tags": tags}, cfg)
}

// bootForTaskWith is bootForTask with more fields of the create request
// (network, hostname, ...).
func (r *rig) bootForTaskWith(t *testing.T, sc scenario, osName string, fields map[string]any, cfg testlab.VMConfig) (machine, map[string]any) {
	t.Helper()
	m := machine{id: r.srv.createTaskWith(testlab.DefaultMAC, osName, imageVersion, fields), disk: testlab.Disk(t, vmDiskSize)}
	r.srv.waitStatus(m.id, "ready", 30*time.Second)
	cfg.Firmware, cfg.MAC, cfg.Memory, cfg.CPUs, cfg.Disk = sc.firmware, testlab.DefaultMAC, vmMemoryMiB, vmCPUs, m.disk
	if cfg.Timeout == 0 {
		cfg.Timeout = 4 * time.Minute
	}
	m.powerOn = time.Now()
	m.vm = r.lab.StartVM(context.Background(), t, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("artifacts in %s; serial console tail:\n%s", testlab.ArtifactDir(t),
				testlab.Tail(strings.ReplaceAll(m.vm.Serial(), "\r", ""), 40))
		}
	})
	task := waitStatusWhileVM(t, r.srv, m.vm, m.id, "pending_approval", 3*time.Minute)
	return m, task
}

// approve approves the task through the REST API.
func (r *rig) approve(t *testing.T, id string) {
	t.Helper()
	if code, body := r.srv.api("PUT", "/api/v1/tasks/"+id+"/approve", `{"approved":true,"notes":"e2e"}`); code/100 != 2 {
		t.Fatalf("approve: %d %v", code, body)
	}
}

// provision is the whole product on one VM: a task created through the
// REST API; the VM network-boots the real agent, which reports the VM's
// hardware (checked against the QEMU command line); approval through the
// REST API; the agent writes the region's image with progress; the task
// completes, the VM reboots and the region now sends it to its local disk.
// Then the disk is compared with the image byte for byte, the timeline
// must hold every status and stage in order, and the WebSocket client must
// have received every status change, in order.
func provision(t *testing.T, sc scenario) {
	var img []byte
	r := newRig(t, sc, func(bootDir string) { img = makeImage(t, bootDir, imageOS, false) })
	srv, mac := r.srv, testlab.DefaultMAC
	// No cloud-init seed: the disk must be the image, byte for byte
	// (TestInstalledSystemPhonesHome covers the seed).
	m, task := r.bootForTask(t, sc, imageOS, map[string]string{"cloud_init": "off"}, testlab.VMConfig{Reboot: true})
	id, vm, disk := m.id, m.vm, m.disk
	toReport := time.Since(m.powerOn)
	hw, _ := task["hardware"].(map[string]any)
	testlab.Logf(t, r.start, "hardware reported after %s: cpu %v, memory %v, disks %v, network %v",
		toReport.Round(100*time.Millisecond), hw["cpu"], hw["memory"], hw["disks"], hw["network"])
	checkHardware(t, task["hardware"], mac)

	r.approve(t, id)
	approved := time.Now()
	task = waitStatusWhileVM(t, srv, vm, id, "completed", 3*time.Minute)
	toCompleted := time.Since(approved)
	testlab.Logf(t, r.start, "task completed after %s, progress %v", toCompleted.Round(100*time.Millisecond), task["progress"])
	if p, _ := task["progress"].(map[string]any); p["stage"] != "completed" || p["percentage"] != float64(100) {
		t.Errorf("final progress %v, want stage completed at 100%%", task["progress"])
	} else if d, _ := p["details"].(map[string]any); d["written_sha256"] != sha256hex(img) || d["cloud_init"] != nil {
		t.Errorf("final progress details %v: want written_sha256 of the image and no cloud_init seed", d)
	}

	// The agent reboots the VM; the firmware boots from the network again
	// and the region's script sends it to its local disk.
	localBoot := "LPMOS: " + mac + " is installed (task " + id + " completed), booting from the local disk"
	waitSerial(t, vm, localBoot, 2*time.Minute)
	testlab.Logf(t, r.start, "after the reboot the region sent the VM to its local disk")
	res := vm.Stop()
	// iPXE asked for an IPv6 router and the region answered (the lab has
	// no other): that is what spares it the wait.
	if out := srv.proc.Output(); regionRA() && (!strings.Contains(out, "IPv6 router advertisement sent") || !strings.Contains(out, "solicited=true")) {
		t.Errorf("the region answered no IPv6 router solicitation (LPMOS_E2E_REGION_RA=%q)", os.Getenv("LPMOS_E2E_REGION_RA"))
	}
	t.Logf("E2E-TIMING mode=%s poweron_to_report=%.1f approval_to_completed=%.1f region_ra=%v ipv6_router=%s", sc.name(), toReport.Seconds(), toCompleted.Seconds(), regionRA(), cmp.Or(os.Getenv("LPMOS_E2E_IPV6_ROUTER"), "none"))

	serial := strings.ReplaceAll(res.Serial, "\r", "")
	checkBootPath(t, sc, serial, id, mac)
	checkDisk(t, disk, img)
	checkTimeline(t, srv.task(id), []string{"pending", "ready", "booting", "pending_approval", "approved", "installing", "completed"},
		[]string{"partitioning", "downloading", "writing", "configuring"}) // then the completed status
	r.ws.waitStatuses(t, id, []string{"pending", "ready", "booting", "pending_approval", "approved", "installing", "completed"})
	if sc.proxy {
		// The addresses came from the site's server, not from ours.
		if !regexp.MustCompile(`DHCPACK\(\S+\) 10\.99\.0\.\d+ ` + mac).MatchString(r.site.Output()) {
			t.Errorf("the site's DHCP server did not lease the VM an address:\n%s", testlab.Tail(r.site.Output(), 20))
		}
	}
	testlab.Logf(t, r.start, "disk, timeline and WebSocket messages checked")
}

// waitSerial waits until the VM's serial console shows text (line breaks
// ignored: iPXE wraps its lines at 80 columns).
func waitSerial(t *testing.T, vm *testlab.VM, text string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(strings.NewReplacer("\r", "", "\n", "").Replace(vm.Serial()), text) {
		select {
		case <-vm.Done():
			t.Fatalf("the VM stopped (%v) before its console showed %q", vm.Wait().Err, text)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the VM's console did not show %q within %s", text, timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkBootPath checks the serial log: the firmware's own boot path, our
// agent script, and the task's parameters on the kernel command line.
func checkBootPath(t *testing.T, sc scenario, serial, id, mac string) {
	t.Helper()
	if !regexp.MustCompile(sc.bootPath).MatchString(serial) {
		t.Errorf("the serial log does not show the %s boot path (%s)", sc.firmware, sc.bootPath)
	}
	if !strings.Contains(serial, "LPMOS: booting the agent for task "+id) {
		t.Errorf("the serial log does not show our agent script for task %s", id)
	}
	m := regexp.MustCompile(`(?m)Command line: (.*)$`).FindStringSubmatch(serial)
	if m == nil {
		t.Errorf("the serial log has no kernel command line (the kernel did not boot?)")
		return
	}
	for _, want := range []string{"lpmos.task=" + id, "lpmos.mac=" + mac, "lpmos.region=" + regionURL} {
		if !strings.Contains(m[1], want) {
			t.Errorf("kernel command line lacks %q: %s", want, m[1])
		}
	}
	if !regexp.MustCompile(`(^| )lpmos\.token=\S+`).MatchString(m[1]) {
		t.Errorf("kernel command line has no lpmos.token: %s", m[1])
	}
}

// checkDisk compares the VM's disk with the image: the image's bytes, then
// zeros.
func checkDisk(t *testing.T, disk string, img []byte) {
	t.Helper()
	got, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != vmDiskSize {
		t.Fatalf("the disk is %d bytes, want %d", len(got), vmDiskSize)
	}
	if !bytes.Equal(got[:len(img)], img) {
		i := 0
		for i < len(img) && got[i] == img[i] {
			i++
		}
		t.Errorf("the disk's first %d bytes differ from the image, first at offset %d", len(img), i)
	}
	if !bytes.Equal(got[len(img):], make([]byte, vmDiskSize-len(img))) {
		t.Errorf("the disk beyond the image is not zero")
	}
}

// checkTimeline checks the task's timeline went through the statuses and
// the install stages in order, nothing missing, nothing else.
func checkTimeline(t *testing.T, task map[string]any, wantStatuses, wantStages []string) {
	t.Helper()
	if got := statuses(task); strings.Join(got, " ") != strings.Join(wantStatuses, " ") {
		t.Errorf("timeline statuses:\n got  %v\n want %v", got, wantStatuses)
	}
	if got := stages(task); strings.Join(got, " ") != strings.Join(wantStages, " ") {
		t.Errorf("timeline stages:\n got  %v\n want %v", got, wantStages)
	}
}

// stages returns the install stages of the task's timeline, in order.
func stages(task map[string]any) []string {
	var out []string
	tl, _ := task["timeline"].([]any)
	for _, e := range tl {
		if m, _ := e.(map[string]any); m != nil {
			if st, _ := m["stage"].(string); st != "" {
				out = append(out, st)
			}
		}
	}
	return out
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
