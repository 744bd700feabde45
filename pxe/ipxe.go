package pxe

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// DefaultIPXEDir is where Debian's ipxe package installs the iPXE binaries.
const DefaultIPXEDir = "/usr/lib/ipxe"

// IPXEBinaries are the iPXE builds a region hands out over TFTP: BIOS
// machines get undionly.kpxe, UEFI machines snponly.efi (or ipxe.efi for NICs
// without SNP).
var IPXEBinaries = []string{"undionly.kpxe", "snponly.efi", "ipxe.efi"}

// ErrNoIPXE is wrapped when a directory holds none of IPXEBinaries.
var ErrNoIPXE = errors.New("no iPXE binaries")

// FindIPXE returns the first of dirs (DefaultIPXEDir if none are given) that
// holds at least one of IPXEBinaries that can be served from it, that is a
// regular file or a symbolic link resolving inside the directory (see Dir).
func FindIPXE(dirs ...string) (string, error) {
	if len(dirs) == 0 {
		dirs = []string{DefaultIPXEDir}
	}
	for _, d := range dirs {
		if found, _ := checkIPXE(Dir(d)); len(found) > 0 {
			return d, nil
		}
	}
	return "", noIPXEError(strings.Join(dirs, ", "))
}

func noIPXEError(where string) error {
	return fmt.Errorf("%w (%s) in %s: install the Debian package ipxe (apt-get install ipxe) "+
		"or point at a directory holding them", ErrNoIPXE, strings.Join(IPXEBinaries, ", "), where)
}

// checkIPXE reports which iPXE binaries fsys can serve, and why the others
// cannot be served when they exist but are refused (a link out of the root).
func checkIPXE(fsys fs.FS) (found []string, refused map[string]error) {
	for _, name := range IPXEBinaries {
		f, _, err := openRegular(fsys, name)
		switch {
		case err == nil:
			f.Close()
			found = append(found, name)
		case !errors.Is(err, fs.ErrNotExist):
			if refused == nil {
				refused = map[string]error{}
			}
			refused[name] = err
		}
	}
	return found, refused
}
