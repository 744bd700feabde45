package pxe

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/lpmos/lpmos"
)

// ErrNoIPXE is wrapped when a TFTP root holds none of lpmos.IPXEBinaries
// that can be served from it, so a region that would hand out boot files
// nobody can fetch fails at start instead.
var ErrNoIPXE = errors.New("no iPXE binaries")

func noIPXEError(where string) error {
	return fmt.Errorf("%w (%s) in %s: install the Debian package ipxe (apt-get install ipxe) "+
		"or point at a directory holding them", ErrNoIPXE, strings.Join(lpmos.IPXEBinaries(), ", "), where)
}

// checkIPXE reports which iPXE binaries fsys can serve, and why the others
// cannot be served when they exist but are refused (a link out of the root).
func checkIPXE(fsys fs.FS) (found []string, refused map[string]error) {
	for _, name := range lpmos.IPXEBinaries() {
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
