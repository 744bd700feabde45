// Package ipxe renders the per-machine iPXE scripts that the region serves at
// /boot/{mac}.ipxe, and locates iPXE binaries on disk (Locate). Which binary
// a machine gets, the binaries' file names and their default directory are
// not kept here but in the shared vocabulary (lpmos.Firmware.IPXEBinary,
// lpmos.IPXEBinaries, lpmos.DefaultIPXEDir), because dhcp and pxe, which
// must not import this package, need them too.
//
// It never talks to the store: the region decides what a machine should do
// (boot the agent, an installer, the local disk, wait, stop) and passes
// plain values in; this package only turns them into a script.
//
// # Safety of rendered scripts
//
// iPXE splits each line on white space, treats a word starting with '#' as a
// comment, the words "||", "&&" and ";" as operators, a trailing '\' as a
// line continuation, and expands ${...} settings references in every word,
// including the kernel command line. It has no quoting. A value that carried
// any of these could add commands to a machine's boot script, so every value
// is checked against a strict allow-list before it is interpolated, and a
// value that fails gets an error wrapping ErrInvalid instead of a script.
// The scripts themselves use no settings references at all, so "${" never
// appears in a rendered script.
//
// # What Debian's iPXE can do
//
// The default binaries are Debian's ipxe package (1.0.0+git-20190125). The
// scripts keep to commands that build has, checked in QEMU with SeaBIOS and
// OVMF: kernel, initrd (including --name), boot, imgfree, echo, sleep, goto,
// exit, reboot and sanboot. It has no poweroff command and no HTTPS, so
// scripts that want to power a machine off try poweroff and fall back to
// exit, and URLs should be http.
package ipxe

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/lpmos/lpmos"
)

// Locate returns the path of the iPXE binary name (one of
// lpmos.IPXEBinaries, or an operator's own build) in dir
// (lpmos.DefaultIPXEDir when empty) with symbolic links resolved, so a TFTP or HTTP server that refuses
// to follow links can still serve Debian's ipxe.efi, which links to
// /boot/ipxe.efi. It fails unless the result is a regular file.
func Locate(dir, name string) (string, error) {
	if dir == "" {
		dir = lpmos.DefaultIPXEDir
	}
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return "", fmt.Errorf("ipxe: binary name %q is not a plain file name", name)
	}
	p, err := filepath.EvalSymlinks(filepath.Join(dir, name))
	if err != nil {
		return "", fmt.Errorf("ipxe: locate %s: %w", name, err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("ipxe: locate %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("ipxe: locate %s: %s is not a regular file", name, p)
	}
	return p, nil
}
