package install

import (
	"os"
	"syscall"
)

// openDirect opens an existing path for writing with O_DIRECT, bypassing
// the page cache. Callers fall back to buffered writes on any error
// (EINVAL: the file system or device does not support O_DIRECT).
func openDirect(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
}
