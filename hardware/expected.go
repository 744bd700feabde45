package hardware

import (
	"fmt"
	"strings"

	"github.com/lpmos/lpmos"
)

// Expected is the hardware an operator expects a machine to have, as an
// asset database or a purchase order states it. A zero field states
// nothing. A report is checked against it before an auto-approval rule
// that asks for it approves the machine: a server whose DIMM died in
// transit, or a box racked in the wrong slot, then waits for a person.
type Expected struct {
	Cores    int `json:"cores,omitempty"`
	MemoryGB int `json:"memory_gb,omitempty"`
	Disks    int `json:"disks,omitempty"`
	// Vendor, Model and Serial are the system's SMBIOS identity (vendor,
	// product name, serial number), compared without regard to case or
	// surrounding spaces.
	Vendor string `json:"vendor,omitempty"`
	Model  string `json:"model,omitempty"`
	Serial string `json:"serial,omitempty"`
}

// IsZero reports whether e states nothing.
func (e Expected) IsZero() bool { return e == Expected{} }

// Validate checks an expectation; errors name the field (as "cores", …).
func (e Expected) Validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"cores", e.Cores}, {"memory_gb", e.MemoryGB}, {"disks", e.Disks}} {
		if f.v < 0 {
			return &ValidationError{Field: f.name, Reason: "must not be negative"}
		}
	}
	for _, f := range []struct{ name, v string }{{"vendor", e.Vendor}, {"model", e.Model}, {"serial", e.Serial}} {
		if len(f.v) > MaxStringLen || lpmos.ValidateText(f.v, false) != nil {
			return &ValidationError{Field: f.name, Reason: fmt.Sprintf("want at most %d bytes of printable text", MaxStringLen)}
		}
	}
	if e.IsZero() {
		return &ValidationError{Field: "expected", Reason: "states nothing: give at least one of cores, memory_gb, disks, vendor, model, serial (or remove it)"}
	}
	return nil
}

// Mismatches lists how a report differs from e; none means it matches.
//
// Cores and disks must be equal. Memory may be below the expectation by
// up to a sixteenth (at least 1 GB): without SMBIOS DIMMs the report's
// figure is the kernel's MemTotal, which firmware and kernel reservations
// make smaller than what is installed; it may not be above it.
func (e Expected) Mismatches(hw *Info) []string {
	if hw == nil {
		return []string{"no hardware report"}
	}
	var why []string
	if e.Cores > 0 && hw.CPU.Cores != e.Cores {
		why = append(why, fmt.Sprintf("%d cores, expected %d", hw.CPU.Cores, e.Cores))
	}
	if e.MemoryGB > 0 {
		slack := max(1, e.MemoryGB/16)
		if got := hw.Memory.TotalGB; got > e.MemoryGB || got < e.MemoryGB-slack {
			why = append(why, fmt.Sprintf("%d GB memory, expected %d", got, e.MemoryGB))
		}
	}
	if e.Disks > 0 && len(hw.Disks) != e.Disks {
		why = append(why, fmt.Sprintf("%d disks, expected %d", len(hw.Disks), e.Disks))
	}
	for _, f := range []struct{ name, want, got string }{
		{"vendor", e.Vendor, hw.System.Vendor}, {"model", e.Model, hw.System.Product}, {"serial", e.Serial, hw.System.Serial},
	} {
		if f.want != "" && !strings.EqualFold(strings.TrimSpace(f.want), strings.TrimSpace(f.got)) {
			why = append(why, fmt.Sprintf("%s %q, expected %q", f.name, f.got, f.want))
		}
	}
	return why
}
