//go:build !linux

package install

import (
	"errors"
	"os"
)

// openDirect: O_DIRECT is only used on Linux (where the agent runs).
func openDirect(string) (*os.File, error) { return nil, errors.ErrUnsupported }
