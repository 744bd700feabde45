// Package ipxe renders the per-machine iPXE scripts that the region serves at
// /boot/{mac}.ipxe, and knows the iPXE binaries that DHCP hands to PXE
// firmware. It never talks to the store: the region decides what a machine
// should do (boot the agent, an installer, the local disk, wait, stop) and
// passes plain values in; this package only turns them into a script.
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
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/lpmos/lpmos"
)

// The iPXE binaries LPMOS serves, by their file names in Debian's ipxe
// package.
const (
	// BIOS is iPXE for legacy BIOS PXE: it drives the NIC through the
	// firmware's UNDI stack, so one small binary works with any NIC.
	BIOS = "undionly.kpxe"
	// UEFISNP is iPXE for UEFI that drives the NIC through the firmware's
	// SNP protocol. It is the default for UEFI: 174 KB instead of 850 KB,
	// about 6 s faster through slow firmware network stacks, and it also
	// works when loaded by UEFI HTTP boot.
	UEFISNP = "snponly.efi"
	// UEFIFull is iPXE for UEFI with its own NIC drivers, for the rare
	// firmware whose SNP is broken. Debian ships it as a symbolic link.
	UEFIFull = "ipxe.efi"
)

// DefaultDir is where Debian's ipxe package installs the binaries.
const DefaultDir = "/usr/lib/ipxe"

// ErrNoBinary is wrapped when LPMOS knows a firmware kind but has no iPXE
// binary for it, so the DHCP server can ignore such clients with a clear log
// line instead of offering a file they cannot run.
var ErrNoBinary = errors.New("no iPXE binary")

// BinaryFor returns the file name of the iPXE binary a machine with this
// firmware should be given. UEFI HTTP boot gets the same file as UEFI PXE;
// only the way it is fetched differs.
//
// arm64 gets an error wrapping ErrNoBinary: Debian's ipxe package ships only
// x86 binaries (undionly.kpxe, ipxe.pxe, snponly.efi, ipxe.efi, ipxe.lkrn).
// Unknown firmware names get an error wrapping lpmos.ErrUnknownFirmware.
func BinaryFor(fw lpmos.Firmware) (string, error) {
	switch fw {
	case lpmos.FirmwareBIOS:
		return BIOS, nil
	case lpmos.FirmwareUEFI, lpmos.FirmwareUEFIHTTP:
		return UEFISNP, nil
	case lpmos.FirmwareARM64, lpmos.FirmwareARM64HTTP:
		return "", fmt.Errorf("%w for %s: no arm64 iPXE binary in Debian's ipxe package", ErrNoBinary, fw)
	}
	return "", fmt.Errorf("%w %q", lpmos.ErrUnknownFirmware, string(fw))
}

// Locate returns the path of the iPXE binary name in dir (DefaultDir when
// empty) with symbolic links resolved, so a TFTP or HTTP server that refuses
// to follow links can still serve Debian's ipxe.efi, which links to
// /boot/ipxe.efi. It fails unless the result is a regular file.
func Locate(dir, name string) (string, error) {
	if dir == "" {
		dir = DefaultDir
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
