//go:build !unix

package pxe

import "os"

const openFlags = os.O_RDONLY
