// Package rule owns auto-approval rules (seed v1 §8.2): conditions over the
// hardware a machine reports, kept under /lpmos/rules/{name}. A task whose
// report matches a rule that applies to it is approved by "rule:<name>",
// audited like a person's approval; one that matches none stays
// pending_approval, and the reasons each rule gave are written to its
// timeline, so the operator sees why.
//
// A rule applies to a task when its Region is empty or the task's region,
// or when the task names it (the task tag TaskTag). The region evaluates
// the rules when its agent reports (it holds a View of them); the control
// plane serves the rules API over a Service. The package knows hardware
// and the store; it knows nothing of tasks beyond their region and tags.
package rule

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lpmos/lpmos"
	"github.com/lpmos/lpmos/hardware"
)

// Prefix is where the rules live, one key per rule.
const Prefix = "/lpmos/rules/"

// GuardKey is written with every rule created (the count of rules then):
// creates compare it, so that two racing for the last free place do not
// both take it. Outside Prefix, so a watch of the rules never sees it.
const GuardKey = "/lpmos/config/rules_guard"

// TaskTag names, on a task, a rule to apply to it whatever the rule's
// region.
const TaskTag = "approval_rule"

// ActorPrefix starts the approver of a task approved by a rule.
const ActorPrefix = "rule:"

// Sentinel errors; the control plane maps them to 400, 404 and 409.
var (
	ErrInvalid  = errors.New("invalid rule")
	ErrNotFound = errors.New("rule not found")
	ErrConflict = errors.New("rule conflict")
)

// ValidationError names the field that failed validation.
type ValidationError struct {
	Field  string
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("%v: %s: %s", ErrInvalid, e.Field, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalid) hold.
func (e *ValidationError) Unwrap() error { return ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Rule is a set of conditions, all of which a report must meet. Zero
// fields are no condition; a rule must have at least one.
type Rule struct {
	Name string `json:"name"`
	// Region limits the rule to one region's tasks; empty: every region.
	Region string `json:"region,omitempty"`
	// OnlyNamed: the rule applies only to tasks that name it (TaskTag).
	OnlyNamed bool `json:"only_named,omitempty"`

	MinCores    int `json:"min_cores,omitempty"`
	MaxCores    int `json:"max_cores,omitempty"`
	MinMemoryGB int `json:"min_memory_gb,omitempty"`
	MaxMemoryGB int `json:"max_memory_gb,omitempty"`
	MinDisks    int `json:"min_disks,omitempty"`
	MaxDisks    int `json:"max_disks,omitempty"`
	// MinDiskGB: at least one disk of at least this size (of DiskType, if
	// set).
	MinDiskGB int `json:"min_disk_gb,omitempty"`
	// DiskType: at least one disk of this type (SSD, HDD, NVMe).
	DiskType hardware.DiskType `json:"disk_type,omitempty"`
	// MinNICMbps: at least one NIC linked at this speed or faster.
	MinNICMbps int `json:"min_nic_mbps,omitempty"`
	// Vendor, Model and Serial are shell patterns (path.Match: *, ?,
	// [...]) over the system's vendor, product name and serial, matched
	// case-insensitively.
	Vendor string `json:"vendor,omitempty"`
	Model  string `json:"model,omitempty"`
	Serial string `json:"serial,omitempty"`
	// MatchExpected: the machine's record states the hardware it should
	// have (machine.Machine.Expected, from an asset database) and the
	// report matches it. A machine without such a statement fails.
	MatchExpected bool `json:"match_expected,omitempty"`

	Notes     string    `json:"notes,omitempty"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
	UpdatedBy string    `json:"updated_by,omitempty"`
}

var nameRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

// MaxRules bounds how many rules may exist.
const MaxRules = 256

// ValidateName checks a rule name.
func ValidateName(name string) error {
	if !nameRe.MatchString(name) {
		return invalid("name", "%q is not a rule name (lowercase letters, digits, '.', '_', '-'; at most 63)", trunc(name))
	}
	return nil
}

// Validate checks a rule; errors name the field.
func (r *Rule) Validate() error {
	if err := ValidateName(r.Name); err != nil {
		return err
	}
	if r.Region != "" {
		if err := lpmos.ValidateRegionID(r.Region); err != nil {
			return invalid("region", "%v", err)
		}
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"min_cores", r.MinCores}, {"max_cores", r.MaxCores}, {"min_memory_gb", r.MinMemoryGB}, {"max_memory_gb", r.MaxMemoryGB},
		{"min_disks", r.MinDisks}, {"max_disks", r.MaxDisks}, {"min_disk_gb", r.MinDiskGB}, {"min_nic_mbps", r.MinNICMbps}} {
		if f.v < 0 {
			return invalid(f.name, "must not be negative")
		}
	}
	for _, p := range []struct {
		field, min, max string
		lo, hi          int
	}{
		{"max_cores", "min_cores", "max_cores", r.MinCores, r.MaxCores},
		{"max_memory_gb", "min_memory_gb", "max_memory_gb", r.MinMemoryGB, r.MaxMemoryGB},
		{"max_disks", "min_disks", "max_disks", r.MinDisks, r.MaxDisks},
	} {
		if p.hi > 0 && p.hi < p.lo {
			return invalid(p.field, "%s %d is below %s %d", p.max, p.hi, p.min, p.lo)
		}
	}
	switch r.DiskType {
	case "", hardware.DiskSSD, hardware.DiskHDD, hardware.DiskNVMe:
	default:
		return invalid("disk_type", "%q is not SSD, HDD or NVMe", trunc(string(r.DiskType)))
	}
	for _, f := range []struct{ name, v string }{{"vendor", r.Vendor}, {"model", r.Model}, {"serial", r.Serial}} {
		if f.v == "" {
			continue
		}
		if len(f.v) > 128 || lpmos.ValidateText(f.v, false) != nil {
			return invalid(f.name, "want a pattern of at most 128 printable characters")
		}
		if _, err := path.Match(strings.ToLower(f.v), ""); err != nil {
			return invalid(f.name, "%q is not a valid pattern: %v", trunc(f.v), err)
		}
	}
	if len(r.Notes) > 1024 || lpmos.ValidateText(r.Notes, true) != nil {
		return invalid("notes", "at most 1024 characters of text")
	}
	if r.MinCores == 0 && r.MaxCores == 0 && r.MinMemoryGB == 0 && r.MaxMemoryGB == 0 && r.MinDisks == 0 && r.MaxDisks == 0 &&
		r.MinDiskGB == 0 && r.DiskType == "" && r.MinNICMbps == 0 && r.Vendor == "" && r.Model == "" && r.Serial == "" && !r.MatchExpected {
		return invalid("rule", "a rule needs at least one condition: it would approve any machine")
	}
	return nil
}

// AppliesTo reports whether the rule applies to a task of region with
// tags.
func (r *Rule) AppliesTo(region string, tags map[string]string) bool {
	if tags[TaskTag] == r.Name {
		return true
	}
	return !r.OnlyNamed && (r.Region == "" || r.Region == region)
}

// Match checks a report against the rule: ok, or the reasons it fails.
// expected is what the machine's record says it should have (nil when it
// says nothing); only MatchExpected reads it.
func (r *Rule) Match(hw *hardware.Info, expected *hardware.Expected) (bool, []string) {
	var why []string
	fail := func(format string, args ...any) { why = append(why, fmt.Sprintf(format, args...)) }
	if hw == nil {
		return false, []string{"no hardware report"}
	}
	if r.MinCores > 0 && hw.CPU.Cores < r.MinCores {
		fail("%d cores < %d", hw.CPU.Cores, r.MinCores)
	}
	if r.MaxCores > 0 && hw.CPU.Cores > r.MaxCores {
		fail("%d cores > %d", hw.CPU.Cores, r.MaxCores)
	}
	if r.MinMemoryGB > 0 && hw.Memory.TotalGB < r.MinMemoryGB {
		fail("%d GB memory < %d", hw.Memory.TotalGB, r.MinMemoryGB)
	}
	if r.MaxMemoryGB > 0 && hw.Memory.TotalGB > r.MaxMemoryGB {
		fail("%d GB memory > %d", hw.Memory.TotalGB, r.MaxMemoryGB)
	}
	if r.MinDisks > 0 && len(hw.Disks) < r.MinDisks {
		fail("%d disks < %d", len(hw.Disks), r.MinDisks)
	}
	if r.MaxDisks > 0 && len(hw.Disks) > r.MaxDisks {
		fail("%d disks > %d", len(hw.Disks), r.MaxDisks)
	}
	if r.MinDiskGB > 0 || r.DiskType != "" {
		if !slices.ContainsFunc(hw.Disks, func(d hardware.Disk) bool {
			return d.SizeGB >= r.MinDiskGB && (r.DiskType == "" || d.Type == r.DiskType)
		}) {
			what := "disk"
			if r.DiskType != "" {
				what = string(r.DiskType) + " disk"
			}
			fail("no %s of at least %d GB", what, r.MinDiskGB)
		}
	}
	if r.MinNICMbps > 0 && !slices.ContainsFunc(hw.Network, func(n hardware.NIC) bool { return nicMbps(n.Speed) >= r.MinNICMbps }) {
		fail("no NIC at %d Mb/s or faster", r.MinNICMbps)
	}
	for _, f := range []struct{ name, pattern, value string }{
		{"vendor", r.Vendor, hw.System.Vendor}, {"model", r.Model, hw.System.Product}, {"serial", r.Serial, hw.System.Serial},
	} {
		if f.pattern == "" {
			continue
		}
		if ok, _ := path.Match(strings.ToLower(f.pattern), strings.ToLower(f.value)); !ok {
			fail("%s %q does not match %q", f.name, trunc(f.value), f.pattern)
		}
	}
	if r.MatchExpected {
		if expected == nil {
			fail("the machine's record states no expected hardware")
		} else {
			for _, m := range expected.Mismatches(hw) {
				fail("%s", m)
			}
		}
	}
	return len(why) == 0, why
}

var speedRe = regexp.MustCompile(`^\s*([0-9]+(?:\.[0-9]+)?)\s*([GMgm])`)

// nicMbps reads a NIC speed as the collectors write it ("10Gbps",
// "1000Mb/s", "25G"); 0 when unknown.
func nicMbps(s string) int {
	m := speedRe.FindStringSubmatch(s)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0
	}
	if strings.EqualFold(m[2], "g") {
		v *= 1000
	}
	return int(v)
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
