package hardware_test

import (
	"bytes"
	"encoding/binary"
	"flag"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/u-root/u-root/pkg/smbios"
)

// Fixtures are directory trees under testdata/ shaped like the parts of /
// the collector reads. They hold plain files only: where sysfs has a link
// (device/driver) the fixture carries the device's uevent, which names the
// driver too.
//
//	go test ./hardware -run TestCaptureFixture -capture   re-captures testdata/host from this machine (as root, for DMI serials)
//	go test ./hardware -run TestWriteFixtures -update     rewrites testdata/qemu-q35 and testdata/server from the maps below
//
// After either, update the expected Info in collect_test.go.
var (
	capture = flag.Bool("capture", false, "re-capture testdata/host from the running machine")
	update  = flag.Bool("update", false, "rewrite the synthetic fixture trees in testdata/")
)

// writeTree creates files under dir; a map value is the file's content.
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
}

// replaceTree makes dir hold exactly files.
func replaceTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	require.NoError(t, os.RemoveAll(dir))
	writeTree(t, dir, files)
}

func TestWriteFixtures(t *testing.T) {
	if !*update {
		t.Skip("run with -update to rewrite testdata/qemu-q35 and testdata/server")
	}
	replaceTree(t, "testdata/qemu-q35", qemuTree(t))
	replaceTree(t, "testdata/server", serverTree(t))
}

// TestCaptureFixture copies what the collector reads from the running
// machine into testdata/host, so the tests that use it need no root and run
// anywhere. Only regular files are copied; links are resolved into the
// files the collector falls back to.
func TestCaptureFixture(t *testing.T) {
	if !*capture {
		t.Skip("run with -capture to re-capture testdata/host from this machine")
	}
	files := map[string]string{}
	copyFile := func(src string) {
		data, err := os.ReadFile(src)
		if err != nil {
			return // unreadable here (EINVAL for speed of a down link, EACCES): absent in the fixture too
		}
		files[strings.TrimPrefix(src, "/")] = string(data)
	}
	copyFile("/proc/cpuinfo")
	copyFile("/proc/meminfo")

	blocks, _ := os.ReadDir("/sys/block")
	for _, b := range blocks {
		p := "/sys/block/" + b.Name()
		for _, a := range []string{"size", "removable", "queue/rotational", "serial", "wwid",
			"device/model", "device/name", "device/serial", "device/wwid", "device/uevent"} {
			copyFile(p + "/" + a)
		}
	}
	nets, _ := os.ReadDir("/sys/class/net")
	for _, n := range nets {
		p := "/sys/class/net/" + n.Name()
		copyFile(p + "/address")
		copyFile(p + "/speed")
		copyFile(p + "/device/uevent")
		if target, err := os.Readlink(p + "/device/driver"); err == nil {
			// Keep the driver the link names even if uevent does not.
			files[strings.TrimPrefix(p, "/")+"/device/uevent"] = "DRIVER=" + filepath.Base(target) + "\n"
		}
	}
	_ = filepath.WalkDir("/sys/class/dmi/id", func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			copyFile(path)
		}
		return nil
	})
	copyFile("/sys/firmware/dmi/tables/smbios_entry_point")
	copyFile("/sys/firmware/dmi/tables/DMI")
	// An empty directory would not survive version control; the host tree
	// always has proc/cpuinfo, so the root is never empty.
	replaceTree(t, "testdata/host", files)
}

// dimmSpec is one SMBIOS type 17 structure for the synthetic tables.
type dimmSpec struct {
	locator, bank          string
	sizeMB                 uint32 // 0 = empty slot
	memType                uint8  // SMBIOS memory type, 0x1a = DDR4
	speed, configuredSpeed uint16
	manufacturer, serial   string
	part                   string
}

// smbiosTables builds an SMBIOS 3.x entry point and structure table holding
// the given memory devices and an end-of-table marker, the bytes the kernel
// exports as smbios_entry_point and DMI.
func smbiosTables(t testing.TB, dimms []dimmSpec) (entry, table []byte) {
	t.Helper()
	var tb bytes.Buffer
	for i, d := range dimms {
		var strs []string
		idx := func(s string) uint8 {
			if s == "" {
				return 0
			}
			strs = append(strs, s)
			return uint8(len(strs))
		}
		s := make([]byte, 0x22)
		s[0] = 17
		s[1] = 0x22
		binary.LittleEndian.PutUint16(s[2:], uint16(0x1100+i))
		binary.LittleEndian.PutUint16(s[4:], 0x1000) // physical memory array
		binary.LittleEndian.PutUint16(s[6:], 0xfffe) // no error information
		binary.LittleEndian.PutUint16(s[8:], 72)     // total width (ECC)
		binary.LittleEndian.PutUint16(s[0x0a:], 64)  // data width
		if d.sizeMB < 0x7fff {
			binary.LittleEndian.PutUint16(s[0x0c:], uint16(d.sizeMB))
		} else { // 32 GiB and up only fit the extended size field
			binary.LittleEndian.PutUint16(s[0x0c:], 0x7fff)
			binary.LittleEndian.PutUint32(s[0x1c:], d.sizeMB)
		}
		s[0x0e] = 0x09 // DIMM
		s[0x10] = idx(d.locator)
		s[0x11] = idx(d.bank)
		s[0x12] = d.memType
		binary.LittleEndian.PutUint16(s[0x13:], 0x0080) // synchronous
		binary.LittleEndian.PutUint16(s[0x15:], d.speed)
		s[0x17] = idx(d.manufacturer)
		s[0x18] = idx(d.serial)
		s[0x19] = 0
		s[0x1a] = idx(d.part)
		s[0x1b] = 2 // rank
		binary.LittleEndian.PutUint16(s[0x20:], d.configuredSpeed)
		tb.Write(s)
		if len(strs) == 0 {
			tb.Write([]byte{0, 0})
		} else {
			for _, str := range strs {
				tb.WriteString(str)
				tb.WriteByte(0)
			}
			tb.WriteByte(0)
		}
	}
	tb.Write([]byte{127, 4, 0xff, 0xfe, 0, 0}) // end of table
	table = tb.Bytes()

	e := smbios.Entry64{
		Anchor:             [5]uint8{'_', 'S', 'M', '3', '_'},
		Length:             0x18,
		SMBIOSMajorVersion: 3,
		SMBIOSMinorVersion: 3,
		Revision:           1,
		StructMaxSize:      uint32(len(table)),
		StructTableAddr:    0x7fffe000,
	}
	entry, err := e.MarshalBinary()
	require.NoError(t, err)
	// The tables must be what u-root reads back, or the fixture tests lie.
	_, err = smbios.ParseInfo(entry, table)
	require.NoError(t, err)
	return entry, table
}

func cpuinfo(model, vendor string, sockets, coresPerSocket, threadsPerCore int) string {
	var b strings.Builder
	n := 0
	for s := range sockets {
		for range threadsPerCore {
			for c := range coresPerSocket {
				b.WriteString("processor\t: " + itoa(n) + "\n")
				b.WriteString("vendor_id\t: " + vendor + "\n")
				b.WriteString("cpu family\t: 6\n")
				b.WriteString("model name\t: " + model + "\n")
				b.WriteString("physical id\t: " + itoa(s) + "\n")
				b.WriteString("siblings\t: " + itoa(coresPerSocket*threadsPerCore) + "\n")
				b.WriteString("core id\t\t: " + itoa(c) + "\n")
				b.WriteString("cpu cores\t: " + itoa(coresPerSocket) + "\n")
				b.WriteString("flags\t\t: fpu vme de pse tsc msr pae mce\n\n")
				n++
			}
		}
	}
	return b.String()
}

var itoa = strconv.Itoa

func meminfo(totalKB string) string {
	return "MemTotal:       " + totalKB + " kB\nMemFree:         1000000 kB\nMemAvailable:    1500000 kB\n"
}

// qemuTree is modelled on what a QEMU q35 VM with SeaBIOS shows (qemu
// -machine q35 -m 2048 -smp 2 -drive if=virtio -nic user,model=virtio-net-pci
// -cdrom): QEMU's SMBIOS lists one "DIMM 0" of type RAM with no speed, the
// virtio NIC reports speed -1, the virtio disk is rotational and has an
// empty serial. It was written by hand, not captured from a booted VM.
func qemuTree(t *testing.T) map[string]string {
	f := map[string]string{
		"proc/cpuinfo": cpuinfo("QEMU Virtual CPU version 2.5+", "GenuineIntel", 1, 2, 1),
		"proc/meminfo": meminfo("2014116"),

		"sys/block/vda/size":             "41943040\n",
		"sys/block/vda/removable":        "0\n",
		"sys/block/vda/queue/rotational": "1\n",
		"sys/block/vda/serial":           "\n",
		"sys/block/vda/device/uevent":    "DRIVER=virtio_blk\nMODALIAS=virtio:d00000002v00001AF4\n",
		"sys/block/sr0/size":             "2097151\n",
		"sys/block/sr0/removable":        "1\n",
		"sys/block/sr0/device/model":     "QEMU DVD-ROM    \n",

		"sys/class/net/lo/address":         "00:00:00:00:00:00\n",
		"sys/class/net/eth0/address":       "52:54:00:12:34:56\n",
		"sys/class/net/eth0/speed":         "-1\n",
		"sys/class/net/eth0/device/uevent": "DRIVER=virtio_net\nMODALIAS=virtio:d00000001v00001AF4\n",
		"sys/class/dmi/id/bios_vendor":     "SeaBIOS\n",
		"sys/class/dmi/id/bios_version":    "1.16.3-debian-1.16.3-2\n",
		"sys/class/dmi/id/bios_date":       "04/01/2014\n",
		"sys/class/dmi/id/sys_vendor":      "QEMU\n",
		"sys/class/dmi/id/product_name":    "Standard PC (Q35 + ICH9, 2009)\n",
		"sys/class/dmi/id/product_version": "pc-q35-8.2\n",
		"sys/class/dmi/id/product_serial":  "\n",
		"sys/class/dmi/id/product_uuid":    "5B0A3E6C-2F1D-4C8E-9A7B-1D2E3F405162\n",
		"sys/class/dmi/id/chassis_vendor":  "QEMU\n",
		"sys/class/dmi/id/chassis_type":    "1\n",
		"sys/class/dmi/id/chassis_serial":  "\n",
	}
	addSMBIOS(t, f, qemuDIMMs)
	return f
}

func addSMBIOS(t testing.TB, files map[string]string, dimms []dimmSpec) {
	entry, table := smbiosTables(t, dimms)
	files["sys/firmware/dmi/tables/smbios_entry_point"] = string(entry)
	files["sys/firmware/dmi/tables/DMI"] = string(table)
}

// serverTree is a hand-made two-socket server: 2 NVMe, a SATA SSD, a SATA
// HDD and a USB stick next to devices that must be skipped (loop, dm, md,
// zram, an optical drive, an empty card reader); four NICs (two 1G onboard,
// a dual-port 25G card with one port down) next to lo, a bond, a bridge and
// a VLAN; 8 populated DIMMs and 4 empty slots in SMBIOS; Dell DMI identity.
func serverTree(t *testing.T) map[string]string {
	f := map[string]string{
		"proc/cpuinfo": cpuinfo("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", "GenuineIntel", 2, 2, 2),
		"proc/meminfo": meminfo("263687276"),
	}
	disk := func(name, sectors, removable, rotational string, attrs map[string]string) {
		p := "sys/block/" + name + "/"
		f[p+"size"] = sectors + "\n"
		f[p+"removable"] = removable + "\n"
		f[p+"queue/rotational"] = rotational + "\n"
		for k, v := range attrs {
			f[p+k] = v
		}
	}
	disk("nvme0n1", "1875385008", "0", "0", map[string]string{
		"device/model": "SAMSUNG MZQL2960HCJR-00A07              \n", "device/serial": "S64FNE0R100001      \n",
		"wwid": "eui.36344630529001230025384500000001\n"})
	disk("nvme1n1", "1875385008", "0", "0", map[string]string{
		"device/model": "SAMSUNG MZQL2960HCJR-00A07              \n", "device/serial": "S64FNE0R100002      \n",
		"wwid": "eui.36344630529001240025384500000001\n"})
	disk("sda", "937703088", "0", "0", map[string]string{"device/model": "SAMSUNG MZ7LH480\n",
		"wwid": "naa.5002538e30a12345\n"})
	disk("sdb", "3907029168", "0", "1", map[string]string{"device/model": "ST2000NM0055-1V4\n"})
	disk("sdc", "60506112", "1", "1", map[string]string{"device/model": "Ultra Fit       \n"})
	disk("loop0", "2097152", "0", "1", nil)
	disk("dm-0", "1875369984", "0", "0", nil)
	disk("md127", "1875118080", "0", "0", nil)
	disk("zram0", "16777216", "0", "0", nil)
	disk("sr0", "2097151", "1", "1", map[string]string{"device/model": "DVD+-RW DU-8A5LH\n"})
	disk("mmcblk0", "0", "1", "0", nil) // card reader, no card

	nic := func(name, mac, speed, driver string) {
		p := "sys/class/net/" + name + "/"
		f[p+"address"] = mac + "\n"
		if speed != "" {
			f[p+"speed"] = speed + "\n"
		}
		if driver != "" {
			f[p+"device/uevent"] = "DRIVER=" + driver + "\nPCI_CLASS=20000\n"
		}
	}
	nic("lo", "00:00:00:00:00:00", "", "")
	nic("eno1", "b4:96:91:aa:00:01", "1000", "igb")
	nic("eno2", "b4:96:91:aa:00:02", "100", "igb")
	nic("ens1f0np0", "0c:42:a1:bb:00:10", "25000", "mlx5_core")
	nic("ens1f1np1", "0c:42:a1:bb:00:11", "-1", "mlx5_core")
	nic("bond0", "0c:42:a1:bb:00:10", "25000", "")
	nic("br0", "b4:96:91:aa:00:01", "", "")
	nic("eno1.100", "b4:96:91:aa:00:01", "1000", "")

	dmi := map[string]string{
		"bios_vendor":    "Dell Inc.",
		"bios_version":   "1.10.2",
		"bios_date":      "03/14/2024",
		"sys_vendor":     "Dell Inc.",
		"product_name":   "PowerEdge R650",
		"product_serial": "SN12345",
		"product_uuid":   "4C4C4544-0053-4E10-8031-B3C04F313233",
		"board_vendor":   "Dell Inc.",
		"board_name":     "0Y2K8F",
		"board_serial":   ".SN12345.CNFCP0012345.",
		"chassis_serial": "SN12345",
		"chassis_vendor": "Dell Inc.",
	}
	for k, v := range dmi {
		f["sys/class/dmi/id/"+k] = v + "\n"
	}
	addSMBIOS(t, f, serverDIMMs)
	return f
}

// Synthetic SMBIOS content of the fixtures.
var (
	qemuDIMMs = []dimmSpec{
		{locator: "DIMM 0", sizeMB: 2048, memType: 0x07, manufacturer: "QEMU"},
	}
	serverDIMMs = func() []dimmSpec {
		var d []dimmSpec
		for i, slot := range []string{"A1", "A2", "A3", "A4", "A5", "A6", "B1", "B2", "B3", "B4", "B5", "B6"} {
			if i%6 >= 4 { // A5, A6, B5, B6 are empty
				d = append(d, dimmSpec{locator: slot, bank: "Not Specified", memType: 0x02,
					manufacturer: "NO DIMM", serial: "NO DIMM", part: "NO DIMM"})
				continue
			}
			d = append(d, dimmSpec{locator: slot, sizeMB: 32768, memType: 0x1a, speed: 3200, configuredSpeed: 2933,
				manufacturer: "Hynix", serial: "8012" + itoa(3450+i), part: "HMA84GR7CJR4N-XN"})
		}
		return d
	}()
)

// TestSyntheticFixturesUpToDate keeps testdata/qemu-q35 and testdata/server
// in step with the maps above, so the tests never run on a tree nobody can
// regenerate.
func TestSyntheticFixturesUpToDate(t *testing.T) {
	for dir, want := range map[string]map[string]string{
		"testdata/qemu-q35": qemuTree(t),
		"testdata/server":   serverTree(t),
	} {
		got := map[string]string{}
		require.NoError(t, filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			require.True(t, d.Type().IsRegular(), "%s: fixtures hold regular files only", path)
			data, err := os.ReadFile(path)
			rel, _ := filepath.Rel(dir, path)
			got[filepath.ToSlash(rel)] = string(data)
			return err
		}))
		require.Equal(t, want, got, "%s is stale: run go test ./hardware -run TestWriteFixtures -update", dir)
	}
}
