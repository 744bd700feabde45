package install_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// loopDevice attaches a sparse backing file of size bytes (filled with
// fill, if non-nil, from offset 0) to a free loop device with partition
// scanning on (BLKRRPART needs it) and detaches it in cleanup. It needs
// root and losetup (util-linux), as CI has, and fails without them.
func loopDevice(tb testing.TB, size int64, fill []byte) string {
	tb.Helper()
	return loopDeviceOpts(tb, size, fill, false)
}

// loopDeviceOpts is loopDevice; directIO makes the loop device write its
// backing file with O_DIRECT (losetup --direct-io=on), so it behaves like
// a disk rather than like the page cache.
func loopDeviceOpts(tb testing.TB, size int64, fill []byte, directIO bool) string {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatal("loop device: needs root (run ./scripts/test.sh as root)")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		tb.Fatal("loop device: no losetup (Debian package mount/util-linux)")
	}
	backing := filepath.Join(tb.TempDir(), "backing")
	f, err := os.Create(backing)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(size); err == nil && fill != nil {
		_, err = f.WriteAt(fill, 0)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		tb.Fatal(err)
	}
	args := []string{"-f", "--show", "-P"}
	if directIO {
		args = append(args, "--direct-io=on")
	}
	out, err := exec.Command("losetup", append(args, backing)...).CombinedOutput()
	if err != nil {
		tb.Fatalf("loop device: losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	tb.Cleanup(func() {
		// The device may still be busy for a moment after the last close
		// (udev probing it); retry the detach briefly.
		var out []byte
		var err error
		for range 50 {
			if out, err = exec.Command("losetup", "-d", dev).CombinedOutput(); err == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		tb.Errorf("losetup -d %s: %v: %s", dev, err, out)
	})
	return dev
}

// directSupported reports whether files in dir accept O_DIRECT writes.
func directSupported(dir string) bool {
	path := filepath.Join(dir, "odirect-probe")
	defer os.Remove(path)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|syscall.O_DIRECT, 0o644)
	if err != nil {
		return false
	}
	defer f.Close()
	raw := make([]byte, 8192)
	off := int(-uintptrAddr(raw) & 4095)
	_, err = f.WriteAt(raw[off:off+4096], 0)
	return err == nil
}

func uintptrAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

// throttleWrites moves this whole process into a fresh cgroup (v1 blkio,
// or v2 io) that limits writes to dev to bps bytes per second, so dev
// behaves like a disk of that speed for O_DIRECT writes (buffered writes
// are not throttled: the kernel flusher writes them). The process, and the
// children it starts meanwhile, move back at cleanup. Root only.
func throttleWrites(tb testing.TB, dev string, bps int64) {
	tb.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(dev, &st); err != nil {
		tb.Fatal(err)
	}
	majmin := fmt.Sprintf("%d:%d", unix.Major(uint64(st.Rdev)), unix.Minor(uint64(st.Rdev)))
	type variant struct{ root, file, rule string }
	var v variant
	switch {
	case fileExists("/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device"):
		v = variant{"/sys/fs/cgroup/blkio", "blkio.throttle.write_bps_device", fmt.Sprintf("%s %d", majmin, bps)}
	case fileExists("/sys/fs/cgroup/unified/cgroup.controllers"):
		v = variant{"/sys/fs/cgroup/unified", "io.max", fmt.Sprintf("%s wbps=%d", majmin, bps)}
	case fileExists("/sys/fs/cgroup/cgroup.controllers"):
		v = variant{"/sys/fs/cgroup", "io.max", fmt.Sprintf("%s wbps=%d", majmin, bps)}
	default:
		tb.Fatal("throttle: no blkio (cgroup v1) or io (cgroup v2) controller mounted under /sys/fs/cgroup")
	}
	if v.file == "io.max" {
		_ = os.WriteFile(filepath.Join(v.root, "cgroup.subtree_control"), []byte("+io"), 0o644)
	}
	dir := filepath.Join(v.root, fmt.Sprintf("lpmos-bench-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		tb.Fatalf("throttle: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, v.file), []byte(v.rule), 0o644); err != nil {
		_ = os.Remove(dir)
		tb.Fatalf("throttle: %s: %v", v.file, err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0o644); err != nil {
		_ = os.Remove(dir)
		tb.Fatalf("throttle: joining %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(v.root, "cgroup.procs"), pid, 0o644); err != nil {
			tb.Errorf("throttle: leaving %s: %v", dir, err)
			return
		}
		// The cgroup empties once the children that inherited it exit.
		for range 50 {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		tb.Errorf("throttle: %s is left behind", dir)
	})
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// processCPU is the CPU time (user and system) this process has used.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
