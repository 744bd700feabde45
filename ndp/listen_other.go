//go:build !linux

package ndp

import (
	"context"
	"errors"
)

// Listen needs SO_BINDTODEVICE, which only Linux has.
func Listen(context.Context, string) (*Conn, error) {
	return nil, errors.New("ndp: binding to an interface is only supported on Linux")
}
