package install_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// loopDevice attaches a sparse backing file of size bytes (filled with
// fill, if non-nil, from offset 0) to a free loop device with partition
// scanning on (BLKRRPART needs it) and detaches it in cleanup. It needs
// root and losetup (util-linux), as CI has, and fails without them.
func loopDevice(tb testing.TB, size int64, fill []byte) string {
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
	out, err := exec.Command("losetup", "-f", "--show", "-P", backing).CombinedOutput()
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
