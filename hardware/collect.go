package hardware

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lpmos/lpmos"
)

// Collector reads a machine's hardware from the kernel's view of it: procfs,
// sysfs and the SMBIOS tables the firmware left in memory. The zero value
// collects the running machine.
type Collector struct {
	// Root is the filesystem root under which proc/ and sys/ are read;
	// empty means "/". Tests point it at a fixture tree.
	Root string
	// Now stamps CollectedAt; nil means time.Now.
	Now func() time.Time
}

// Collect collects the running machine with a zero Collector.
func Collect(ctx context.Context) (Info, error) {
	var c Collector
	return c.Collect(ctx)
}

// Collect fills an Info from c.Root. A source that is missing or unreadable
// (no DMI in a VM, no SMBIOS tables, a file that holds garbage) leaves its
// fields empty: an odd but honest report is for the operator to judge, and a
// machine that cannot report at all cannot be provisioned. The only errors
// are a Root that cannot be read at all and a done ctx. MACAddress is left
// empty; the agent knows which NIC it booted from.
func (c *Collector) Collect(ctx context.Context) (Info, error) {
	root := c.Root
	if root == "" {
		root = "/"
	}
	if _, err := os.ReadDir(root); err != nil {
		return Info{}, fmt.Errorf("hardware: reading root: %w", err)
	}
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}

	// Disks and Network are never nil, so a machine without them reports
	// "disks": [] rather than null.
	info := Info{Disks: []Disk{}, Network: []NIC{}}
	steps := []func(){
		func() { info.CPU = readCPU(root) },
		func() { info.Memory = readMemory(root) },
		func() { info.Disks = append(info.Disks, readDisks(root)...) },
		func() { info.Network = append(info.Network, readNICs(root)...) },
		func() { info.BIOS, info.System, info.Board = readDMI(root) },
	}
	for _, step := range steps {
		if err := ctx.Err(); err != nil {
			return Info{}, err
		}
		step()
	}
	info.CollectedAt = now().UTC()
	return info, nil
}

// readCPU parses /proc/cpuinfo. Threads counts processor entries; cores
// counts distinct (physical id, core id) pairs, sockets distinct physical
// ids. Kernels that print no topology (arm64, some VM kernels) are taken as
// one socket with one thread per core, the only reading that does not invent
// hardware. arm64 kernels print no model name either; Model stays empty there.
func readCPU(root string) CPU {
	data, err := os.ReadFile(filepath.Join(root, "proc/cpuinfo"))
	if err != nil {
		return CPU{}
	}
	var (
		cpu     CPU
		cores   = map[[2]string]bool{}
		sockets = map[string]bool{}
		cur     = map[string]string{}
	)
	flush := func() {
		if _, ok := cur["processor"]; !ok {
			clear(cur)
			return
		}
		cpu.Threads++
		if cpu.Model == "" {
			cpu.Model = clean(cur["model name"])
		}
		if cpu.Vendor == "" {
			cpu.Vendor = clean(cur["vendor_id"])
		}
		pkg, hasPkg := cur["physical id"]
		core, hasCore := cur["core id"]
		if hasPkg {
			sockets[pkg] = true
		}
		if hasCore {
			cores[[2]string{pkg, core}] = true
		}
		clear(cur)
	}
	for line := range strings.Lines(string(data)) {
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		cur[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	flush()
	if cpu.Threads == 0 {
		return CPU{}
	}
	cpu.Sockets = max(len(sockets), 1)
	cpu.Cores = len(cores)
	if cpu.Cores == 0 {
		cpu.Cores = cpu.Threads
	}
	return cpu
}

// readMemory reads MemTotal from /proc/meminfo and the DIMMs from SMBIOS.
// The total is what is installed when SMBIOS lists the modules (the figure on
// the purchase order, 256 GB rather than the 251 GiB the kernel keeps after
// firmware reservations); without DIMMs it is MemTotal rounded to the nearest
// GiB. TotalBytes is the same figure unrounded.
func readMemory(root string) Memory {
	var m Memory
	var installed uint64
	m.DIMMs, installed = readDIMMs(root)
	if installed > 0 {
		m.TotalBytes = installed
	} else {
		m.TotalBytes = memTotal(root)
	}
	m.TotalGB = int(math.Round(float64(m.TotalBytes) / gib))
	return m
}

const gib = 1 << 30

func memTotal(root string) uint64 {
	data, err := os.ReadFile(filepath.Join(root, "proc/meminfo"))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		rest, ok := strings.CutPrefix(line, "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil || kb > math.MaxUint64/1024 {
			return 0
		}
		return kb * 1024
	}
	return 0
}

// readDIMMs lists the populated memory devices (SMBIOS type 17) from the
// tables the kernel exports in /sys/firmware/dmi/tables. Empty slots (size 0,
// or "No Module Installed" where a size would be) are left out. It also
// returns the sum of their sizes in bytes.
func readDIMMs(root string) (dimms []DIMM, total uint64) {
	dir := filepath.Join(root, "sys/firmware/dmi/tables")
	entry, err := os.ReadFile(filepath.Join(dir, "smbios_entry_point"))
	if err != nil {
		return nil, 0
	}
	table, err := os.ReadFile(filepath.Join(dir, "DMI"))
	if err != nil {
		return nil, 0
	}
	for _, md := range memoryDevices(entry, table) {
		size := md.SizeBytes()
		if size == 0 || md.Size == 0xffff || emptySlot(md.Manufacturer) || emptySlot(md.PartNumber) {
			continue
		}
		speed := md.Speed
		if speed == 0 || speed == 0xffff {
			speed = md.ConfiguredSpeed
		}
		if speed == 0xffff {
			speed = 0
		}
		dimms = append(dimms, DIMM{
			Slot:         clean(md.DeviceLocator),
			SizeGB:       int(size / gib),
			Type:         clean(memoryTypeName(md.Type)),
			SpeedMHz:     int(speed),
			Manufacturer: clean(md.Manufacturer),
			Serial:       clean(md.SerialNumber),
		})
		total += size
		if len(dimms) == MaxDIMMs {
			break
		}
	}
	return dimms, total
}

// memoryDevices decodes the type 17 structures (smbios.go). The tables
// come from firmware, where the strangest bytes live, so a structure that
// cannot be decoded is skipped and a panic in the decoder only costs the
// DIMM list, never the report.
func memoryDevices(entry, table []byte) (mds []*memoryDevice) {
	defer func() {
		if recover() != nil {
			mds = nil
		}
	}()
	if checkEntryPoint(entry) != nil {
		return nil
	}
	structs, err := parseSMBIOS(table)
	if err != nil {
		return nil
	}
	for i := range structs {
		if structs[i].typ != 17 {
			continue
		}
		if md, err := newMemoryDevice(&structs[i]); err == nil {
			mds = append(mds, md)
		}
	}
	return mds
}

func emptySlot(s string) bool {
	s = strings.ToLower(strings.TrimSpace(s))
	return s == "no module installed" || s == "no dimm" || s == "empty"
}

// skipDisk lists the /sys/block names that are never an install target:
// loop devices, RAM disks and zram (swap in RAM), device-mapper and md
// volumes (built on top of real disks, which are listed themselves), optical
// drives, floppies and network block devices.
var skipDisk = []string{"loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"}

// readDisks lists /sys/block, which holds whole disks only (partitions live
// beneath them). Disks of size 0 (a card reader with no card) are left out.
func readDisks(root string) []Disk {
	dir := filepath.Join(root, "sys/block")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var disks []Disk
	for _, e := range entries {
		name := e.Name()
		if hasAnyPrefix(name, skipDisk) {
			continue
		}
		p := filepath.Join(dir, name)
		sectors, ok := readUint(filepath.Join(p, "size"))
		if !ok || sectors == 0 || sectors > math.MaxUint64/512 {
			continue
		}
		size := sectors * 512 // sysfs counts 512-byte sectors whatever the disk's block size
		d := Disk{
			Device:    "/dev/" + name,
			SizeBytes: size,
			SizeGB:    int(size / 1e9), // disks are sold in decimal GB: a "480 GB" SSD says 480
			Model:     firstOf(p, "device/model", "device/name"),
			Serial:    firstOf(p, "device/serial", "serial", "wwid", "device/wwid"),
		}
		removable, _ := readUint(filepath.Join(p, "removable"))
		d.Removable = removable == 1
		switch rot, ok := readUint(filepath.Join(p, "queue/rotational")); {
		case strings.HasPrefix(name, "nvme"):
			d.Type = DiskNVMe
		case ok && rot == 0:
			d.Type = DiskSSD
		case ok && rot == 1:
			d.Type = DiskHDD
		}
		disks = append(disks, d)
		if len(disks) == MaxDisks {
			break
		}
	}
	return disks
}

// readNICs lists /sys/class/net. Only interfaces backed by a device (a
// "device" entry: PCI, USB, virtio, …) are listed; lo, bridges, bonds, VLANs,
// tunnels, veth and ifb have none and are not something an operator cables
// or an installer configures from scratch.
func readNICs(root string) []NIC {
	dir := filepath.Join(root, "sys/class/net")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var nics []NIC
	for _, e := range entries {
		name := e.Name()
		p := filepath.Join(dir, name)
		if name == "lo" {
			continue
		}
		if _, err := os.Stat(filepath.Join(p, "device")); err != nil {
			continue
		}
		nics = append(nics, NIC{
			Interface: clean(name),
			MAC:       readString(filepath.Join(p, "address")),
			Speed:     linkSpeed(filepath.Join(p, "speed")),
			Driver:    driver(filepath.Join(p, "device")),
		})
		if len(nics) == MaxNICs {
			break
		}
	}
	return nics
}

// linkSpeed renders sysfs's Mb/s as the report's "10Gbps", "2.5Gbps" or
// "100Mbps". The kernel says -1 (or fails the read with EINVAL) when the
// link is down or the driver does not know, as virtio does: that is "".
func linkSpeed(path string) string {
	s := readString(path)
	mbps, err := strconv.Atoi(s)
	if err != nil || mbps <= 0 {
		return ""
	}
	if mbps < 1000 {
		return strconv.Itoa(mbps) + "Mbps"
	}
	return strconv.FormatFloat(float64(mbps)/1000, 'f', -1, 64) + "Gbps"
}

// driver is the name of the kernel driver bound to a device: the basename of
// its "driver" link, or DRIVER= in its uevent (what fixtures, which hold no
// links, carry).
func driver(dev string) string {
	if target, err := os.Readlink(filepath.Join(dev, "driver")); err == nil {
		return clean(filepath.Base(target))
	}
	data, err := os.ReadFile(filepath.Join(dev, "uevent"))
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "DRIVER="); ok {
			return clean(v)
		}
	}
	return ""
}

// readDMI reads the kernel's decoded SMBIOS identity strings. Reading the
// serials and the UUID needs root; without it they stay empty.
func readDMI(root string) (BIOS, System, Board) {
	id := filepath.Join(root, "sys/class/dmi/id")
	get := func(name string) string { return readString(filepath.Join(id, name)) }
	bios := BIOS{
		Vendor:  get("bios_vendor"),
		Version: get("bios_version"),
		Date:    get("bios_date"),
	}
	// The report format keeps the machine's serial (a Dell service tag, an
	// HPE serial) under bios; the product serial is that number, the
	// chassis and board serials stand in when a vendor leaves it blank.
	for _, f := range []string{"product_serial", "chassis_serial", "board_serial"} {
		if bios.Serial = get(f); bios.Serial != "" {
			break
		}
	}
	sys := System{
		Vendor:  get("sys_vendor"),
		Product: get("product_name"),
		Serial:  get("product_serial"),
		UUID:    strings.ToLower(get("product_uuid")),
	}
	board := Board{
		Vendor:  get("board_vendor"),
		Product: get("board_name"),
		Serial:  get("board_serial"),
	}
	return bios, sys, board
}

// maxAttr bounds how much of one sysfs/procfs attribute is read; real ones
// are a line, and a fixture or a broken driver must not make us read more.
const maxAttr = 4096

// readString returns a small attribute file's content, cleaned; "" when it
// cannot be read.
func readString(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, maxAttr)
	n, err := f.Read(buf)
	if err != nil && n == 0 {
		return ""
	}
	return clean(string(buf[:n]))
}

func readUint(path string) (uint64, bool) {
	n, err := strconv.ParseUint(readString(path), 10, 64)
	return n, err == nil
}

// firstOf returns the first non-empty attribute among names under dir.
func firstOf(dir string, names ...string) string {
	for _, n := range names {
		if s := readString(filepath.Join(dir, n)); s != "" {
			return s
		}
	}
	return ""
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// placeholders are what firmware writes into fields nobody filled in; they
// say nothing about the machine and would only make two machines look alike.
var placeholders = map[string]bool{
	"to be filled by o.e.m.": true,
	"default string":         true,
	"not specified":          true,
	"not available":          true,
	"system serial number":   true,
	"unknown":                true,
	"none":                   true,
	"n/a":                    true,
	"0123456789":             true,
	"123456789":              true,
}

// clean makes a string from hardware safe to report: it drops control and
// bidirectional formatting characters and padding, replaces invalid UTF-8, maps firmware placeholders to "" and cuts
// it to MaxStringLen so that Validate accepts whatever the machine says.
func clean(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	// Firmware strings may hold NULs, ESC or worse; drop what Validate
	// would refuse rather than fail the machine's report.
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '\t':
			return ' '
		case !lpmos.TextRuneAllowed(r, false):
			return -1
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if placeholders[strings.ToLower(s)] {
		return ""
	}
	if len(s) > MaxStringLen {
		s = s[:MaxStringLen]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}
