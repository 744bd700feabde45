// Package hardware owns the model of a machine's hardware that the agent
// reports and operators approve (CPU, memory and DIMMs, disks, NICs, BIOS,
// system and board identity) and the collectors that fill it in on the
// machine itself, usually from the agent's u-root initramfs.
//
// The JSON form of Info is a wire and storage format: it is stored verbatim
// under /lpmos/tasks/{id}/hardware and shown by the dashboard, so field names
// only ever grow. This package describes and inspects hardware; it must not
// talk to the network or the store. Shipping a report is the agent's job,
// storing it the task package's.
//
// # Collecting
//
// A Collector reads plain procfs and sysfs files under its Root ("/" by
// default; tests point it at trees in testdata/): /proc/cpuinfo for the CPU,
// /proc/meminfo for memory, /sys/block for disks, /sys/class/net for NICs,
// /sys/class/dmi/id for BIOS, system and board identity, and the raw SMBIOS
// tables in /sys/firmware/dmi/tables, decoded by smbios.go (u-root's
// pkg/smbios rules, without its reflection-driven decoder of every type),
// for the DIMMs (type 17), which the kernel does not decode anywhere else. A
// source that is missing or holds garbage leaves its fields empty; many VMs
// have no DMI at all, and a report with gaps is more useful than none.
//
// The collectors do not use github.com/jaypipes/ghw. Its Linux backend reads
// the same files, yet it reports no DIMMs, and linking it grows a stripped
// agent binary by about 5 MB (2.1 MB → 7.0 MB measured), most of it net/http
// and TLS linked in for its PCI database's optional pci.ids download (off by
// default, switched on by an environment variable), plus YAML. A hardware
// package must not carry a network client, and the agent binary aims at
// 6 MB (see TestAgentBinarySize in examples/agent).
//
// What is listed, and why:
//   - Disks: whole disks from /sys/block, minus loop, ram, zram, dm-*, md*,
//     sr*, fd* and nbd* (never an install target, or built on disks that are
//     listed themselves) and disks of size 0 (a card reader with no card).
//     SizeGB is decimal, as disks are sold (a 2 TB disk says 2000); Type is
//     NVMe by name, else SSD or HDD by queue/rotational.
//   - NICs: interfaces with a device behind them; lo, bridges, bonds, VLANs,
//     veth, tunnels and ifb have none and are left out.
//   - Memory: TotalGB is the sum of the DIMMs (binary GiB, the figure on the
//     purchase order) when SMBIOS lists them, else /proc/meminfo's MemTotal
//     rounded to the nearest GiB; TotalBytes is that figure unrounded.
//   - Strings are trimmed, made valid UTF-8 and cut to MaxStringLen, and
//     firmware placeholders ("To Be Filled By O.E.M.", "Not Specified") are
//     reported as empty, so a collected Info always passes Validate.
package hardware

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/lpmos/lpmos"
)

// ErrInvalid is wrapped by Validate's errors, so a server can answer 400 to a
// broken report instead of storing it.
var ErrInvalid = errors.New("invalid hardware report")

// ValidationError names the field of a report Validate refused, so a
// server can say which one; it wraps ErrInvalid (and the cause, e.g.
// lpmos.ErrInvalidMAC).
type ValidationError struct {
	Field  string // e.g. "disks[3].model"
	Reason string
	err    error
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("%v: %s: %s", ErrInvalid, e.Field, e.Reason)
}

func (e *ValidationError) Unwrap() []error {
	if e.err != nil {
		return []error{ErrInvalid, e.err}
	}
	return []error{ErrInvalid}
}

// Limits Validate enforces. They are far above any real server (the largest
// have a few dozen disks and NICs and 96 DIMM slots) and are there to bound
// what a buggy or hostile agent can make the store and the dashboard hold.
const (
	MaxDisks     = 256
	MaxNICs      = 256
	MaxDIMMs     = 1024
	MaxStringLen = 256 // bytes, per string field
)

// Info is one hardware report of one machine, as the agent collected it.
// Fields the machine does not expose (many VMs have no DMI data) are left
// empty rather than failing the collection.
type Info struct {
	// MACAddress is the NIC the machine booted from, the one its task is
	// keyed by, in lpmos.MAC's canonical form.
	MACAddress  string    `json:"mac_address,omitempty"`
	CPU         CPU       `json:"cpu"`
	Memory      Memory    `json:"memory"`
	Disks       []Disk    `json:"disks"`
	Network     []NIC     `json:"network"`
	BIOS        BIOS      `json:"bios"`
	System      System    `json:"system,omitzero"`
	Board       Board     `json:"board,omitzero"`
	CollectedAt time.Time `json:"collected_at"`
}

// CPU summarises the processors. Cores and Threads are totals over all
// sockets, which is what sizing decisions need.
type CPU struct {
	Model   string `json:"model"`
	Cores   int    `json:"cores"`
	Threads int    `json:"threads"`
	Sockets int    `json:"sockets,omitempty"`
	Vendor  string `json:"vendor,omitempty"`
}

// Memory is the installed memory. TotalGB is what people read and filter on;
// TotalBytes keeps the exact figure, since rounding to GB hides a missing
// DIMM on small machines.
type Memory struct {
	TotalGB    int    `json:"total_gb"`
	TotalBytes uint64 `json:"total_bytes,omitempty"`
	DIMMs      []DIMM `json:"dimms,omitempty"`
}

// DIMM is one populated memory module, from SMBIOS type 17.
type DIMM struct {
	Slot         string `json:"slot"`
	SizeGB       int    `json:"size_gb"`
	Type         string `json:"type"` // e.g. "DDR4"
	SpeedMHz     int    `json:"speed_mhz"`
	Manufacturer string `json:"manufacturer,omitempty"`
	Serial       string `json:"serial,omitempty"`
}

// DiskType classifies a disk by the medium that matters for placing an OS.
// The set is open: Validate accepts values it does not know, so a newer
// agent can report a new kind to an older server.
type DiskType string

// The disk types collectors report.
const (
	DiskUnknown DiskType = ""
	DiskSSD     DiskType = "SSD"
	DiskHDD     DiskType = "HDD"
	DiskNVMe    DiskType = "NVMe"
)

// Disk is one block device an OS could be installed on.
type Disk struct {
	// Device is the kernel's path, such as /dev/sda or /dev/nvme0n1; it is
	// what an install plan names as the target.
	Device    string   `json:"device"`
	SizeGB    int      `json:"size_gb"`
	SizeBytes uint64   `json:"size_bytes,omitempty"`
	Type      DiskType `json:"type"`
	Model     string   `json:"model"`
	Serial    string   `json:"serial,omitempty"`
	Removable bool     `json:"removable,omitempty"`
}

// NIC is one network interface.
type NIC struct {
	Interface string `json:"interface"`
	// MAC is kept as reported, not as lpmos.MAC, because some interfaces
	// (InfiniBand, tunnels) have addresses that are not 48-bit Ethernet and
	// the report should still list them.
	MAC string `json:"mac"`
	// Speed is the negotiated link speed such as "10Gbps", empty when
	// unknown (no link, or a virtual NIC that does not say).
	Speed  string `json:"speed"`
	Driver string `json:"driver,omitempty"`
}

// BIOS is the firmware identity. Serial is here, not only in System, because
// the original report format put the chassis serial under bios and stored
// reports (and the tools reading them) depend on it.
type BIOS struct {
	Vendor  string `json:"vendor"`
	Version string `json:"version"`
	Serial  string `json:"serial,omitempty"`
	Date    string `json:"date,omitempty"` // as the firmware states it, e.g. "03/14/2024"
}

// System is the product identity from SMBIOS type 1, what an operator checks
// against the asset register.
type System struct {
	Vendor  string `json:"vendor,omitempty"`
	Product string `json:"product,omitempty"`
	Serial  string `json:"serial,omitempty"`
	UUID    string `json:"uuid,omitempty"`
}

// Board is the mainboard identity from SMBIOS type 2.
type Board struct {
	Vendor  string `json:"vendor,omitempty"`
	Product string `json:"product,omitempty"`
	Serial  string `json:"serial,omitempty"`
}

// Validate rejects reports that no real machine produces: negative sizes or
// counts, more than MaxDisks disks, MaxNICs NICs or MaxDIMMs DIMMs, strings
// longer than MaxStringLen bytes, not valid UTF-8 or holding control or
// bidirectional formatting characters (lpmos.ValidateText, single line),
// and a MACAddress that is
// not a unicast Ethernet address. It does not judge plausibility beyond that
// (zero cores, no disks): a report that is odd but honest is for the
// operator to see. The error wraps ErrInvalid and names the first offending
// field, e.g. "disks[3].model".
func (i *Info) Validate() error {
	var v validator
	if i.MACAddress != "" {
		if _, err := lpmos.ParseMAC(i.MACAddress); err != nil {
			// Wrap both, so callers can also test for lpmos.ErrInvalidMAC.
			v.err = &ValidationError{Field: "mac_address", Reason: err.Error(), err: err}
		}
	}

	v.str("cpu.model", i.CPU.Model)
	v.str("cpu.vendor", i.CPU.Vendor)
	v.nonNeg("cpu.cores", i.CPU.Cores)
	v.nonNeg("cpu.threads", i.CPU.Threads)
	v.nonNeg("cpu.sockets", i.CPU.Sockets)

	v.nonNeg("memory.total_gb", i.Memory.TotalGB)
	v.count("memory.dimms", len(i.Memory.DIMMs), MaxDIMMs)
	for n, d := range i.Memory.DIMMs {
		if v.err != nil {
			break
		}
		p := fmt.Sprintf("memory.dimms[%d]", n)
		v.str(p+".slot", d.Slot)
		v.nonNeg(p+".size_gb", d.SizeGB)
		v.str(p+".type", d.Type)
		v.nonNeg(p+".speed_mhz", d.SpeedMHz)
		v.str(p+".manufacturer", d.Manufacturer)
		v.str(p+".serial", d.Serial)
	}

	v.count("disks", len(i.Disks), MaxDisks)
	for n, d := range i.Disks {
		if v.err != nil {
			break
		}
		p := fmt.Sprintf("disks[%d]", n)
		v.str(p+".device", d.Device)
		v.nonNeg(p+".size_gb", d.SizeGB)
		v.str(p+".type", string(d.Type))
		v.str(p+".model", d.Model)
		v.str(p+".serial", d.Serial)
	}

	v.count("network", len(i.Network), MaxNICs)
	for n, nic := range i.Network {
		if v.err != nil {
			break
		}
		p := fmt.Sprintf("network[%d]", n)
		v.str(p+".interface", nic.Interface)
		v.str(p+".mac", nic.MAC)
		v.str(p+".speed", nic.Speed)
		v.str(p+".driver", nic.Driver)
	}

	v.str("bios.vendor", i.BIOS.Vendor)
	v.str("bios.version", i.BIOS.Version)
	v.str("bios.serial", i.BIOS.Serial)
	v.str("bios.date", i.BIOS.Date)
	v.str("system.vendor", i.System.Vendor)
	v.str("system.product", i.System.Product)
	v.str("system.serial", i.System.Serial)
	v.str("system.uuid", i.System.UUID)
	v.str("board.vendor", i.Board.Vendor)
	v.str("board.product", i.Board.Product)
	v.str("board.serial", i.Board.Serial)
	return v.err
}

// validator keeps the first failure so Validate reads as a flat list of
// checks rather than a ladder of ifs.
type validator struct{ err error }

func (v *validator) fail(field, reason string) {
	if v.err == nil {
		v.err = &ValidationError{Field: field, Reason: reason}
	}
}

func (v *validator) str(field, s string) {
	switch {
	case len(s) > MaxStringLen:
		v.fail(field, fmt.Sprintf("%d bytes, at most %d allowed", len(s), MaxStringLen))
	case !utf8.ValidString(s):
		v.fail(field, "not valid UTF-8")
	case lpmos.ValidateText(s, false) != nil:
		// NUL, ESC and bidi overrides would reach the dashboard, logs and
		// terminals of the operator who approves the machine.
		v.fail(field, "contains control or bidirectional formatting characters")
	}
}

func (v *validator) nonNeg(field string, n int) {
	if n < 0 {
		v.fail(field, fmt.Sprintf("negative (%d)", n))
	}
}

func (v *validator) count(field string, n, limit int) {
	if n > limit {
		v.fail(field, fmt.Sprintf("%d entries, at most %d allowed", n, limit))
	}
}
