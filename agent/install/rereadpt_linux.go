package install

import (
	"os"

	"golang.org/x/sys/unix"
)

// rereadPartitions asks the kernel to re-read a block device's partition
// table (BLKRRPART), so the new partitions appear; a no-op for files.
func rereadPartitions(f *os.File) error {
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeDevice == 0 {
		return err
	}
	return unix.IoctlSetInt(int(f.Fd()), unix.BLKRRPART, 0)
}
