package install

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Disk is a candidate install target.
type Disk struct {
	Path      string // /dev/sda, or a file in tests
	SizeBytes int64
	Removable bool
	// InUse marks the disk the agent booted from or has mounted: never
	// chosen automatically.
	InUse bool
}

// DiskLister lists the machine's disks; tests inject their own.
type DiskLister interface {
	Disks(ctx context.Context) ([]Disk, error)
}

// DiskListerFunc adapts a function to DiskLister.
type DiskListerFunc func(ctx context.Context) ([]Disk, error)

// Disks calls f.
func (f DiskListerFunc) Disks(ctx context.Context) ([]Disk, error) { return f(ctx) }

// SysfsDisks lists whole disks from /sys/block (loop, ram, zram, device
// mapper, md and optical devices excluded) and marks those with a mounted
// partition (per /proc/self/mounts) as in use.
type SysfsDisks struct {
	SysBlock string // default /sys/block
	Mounts   string // default /proc/self/mounts
}

// Disks implements DiskLister.
func (s SysfsDisks) Disks(context.Context) ([]Disk, error) {
	sys, mounts := s.SysBlock, s.Mounts
	if sys == "" {
		sys = "/sys/block"
	}
	if mounts == "" {
		mounts = "/proc/self/mounts"
	}
	entries, err := os.ReadDir(sys)
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	mounted := mountedDevices(mounts)
	var out []Disk
	for _, e := range entries {
		name := e.Name()
		if skipDevice(name) {
			continue
		}
		sectors, err := readInt(filepath.Join(sys, name, "size"))
		if err != nil || sectors == 0 {
			continue
		}
		d := Disk{Path: "/dev/" + name, SizeBytes: sectors * 512}
		if r, err := readInt(filepath.Join(sys, name, "removable")); err == nil && r == 1 {
			d.Removable = true
		}
		for dev := range mounted {
			if dev == name || strings.HasPrefix(dev, name) && isPartitionOf(sys, name, dev) {
				d.InUse = true
			}
		}
		out = append(out, d)
	}
	return out, nil
}

func skipDevice(name string) bool {
	for _, p := range []string{"loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func isPartitionOf(sys, disk, part string) bool {
	_, err := os.Stat(filepath.Join(sys, disk, part))
	return err == nil
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// mountedDevices returns the /dev names (without /dev/) of mounted devices.
func mountedDevices(path string) map[string]bool {
	out := map[string]bool{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		dev, _, _ := strings.Cut(sc.Text(), " ")
		if name, ok := strings.CutPrefix(dev, "/dev/"); ok {
			out[name] = true
		}
	}
	return out
}

// ErrNoDisk: no disk fits the plan.
var ErrNoDisk = errors.New("no suitable disk")

// SelectDisk picks the target: an explicit path as given, or for "auto"
// (or empty) the smallest non-removable disk not in use that holds at
// least minBytes. minBytes is the image size as served; for a compressed
// image that is a lower bound, and a disk that turns out too small fails
// the write with code disk_too_small.
func SelectDisk(ctx context.Context, lister DiskLister, want string, minBytes int64) (Disk, error) {
	if want != "" && want != "auto" {
		if !filepath.IsAbs(want) {
			return Disk{}, fmt.Errorf("%w: disk %q is neither \"auto\" nor an absolute path", ErrNoDisk, want)
		}
		return Disk{Path: filepath.Clean(want)}, nil
	}
	disks, err := lister.Disks(ctx)
	if err != nil {
		return Disk{}, err
	}
	var best *Disk
	for i := range disks {
		d := &disks[i]
		if d.Removable || d.InUse || d.SizeBytes < minBytes {
			continue
		}
		if best == nil || d.SizeBytes < best.SizeBytes || d.SizeBytes == best.SizeBytes && d.Path < best.Path {
			best = d
		}
	}
	if best == nil {
		return Disk{}, fmt.Errorf("%w: none of %d disks is fixed, unused and at least %d bytes", ErrNoDisk, len(disks), minBytes)
	}
	return *best, nil
}
