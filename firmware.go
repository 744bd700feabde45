package lpmos

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrUnknownFirmware is wrapped when a firmware name or a client
// architecture code is one LPMOS cannot boot, so the DHCP server can ignore
// such clients instead of offering them a file they cannot run.
var ErrUnknownFirmware = errors.New("unknown firmware")

// Arch is the client system architecture a PXE client sends in DHCP option
// 93 (RFC 4578; values from the IANA "Processor Architecture Types"
// registry). It decides which boot file a machine can run, so it is kept as
// the wire value and mapped to a Firmware in one place.
type Arch uint16

// The architecture codes LPMOS knows about. Others (32-bit ARM, Itanium,
// 32-bit UEFI HTTP, …) exist in the registry but no supported hardware sends
// them.
const (
	// ArchBIOS is legacy x86 BIOS PXE.
	ArchBIOS Arch = 0
	// ArchEFIIA32 is 32-bit x86 UEFI (some tablets and early Macs); it is
	// recognised for logs but not bootable, as no 32-bit iPXE is shipped.
	ArchEFIIA32 Arch = 6
	// ArchEFIx64 is x86-64 UEFI PXE, the common server case.
	ArchEFIx64 Arch = 7
	// ArchEFIBC is "EFI byte code" in the IANA registry, but RFC 4578 as
	// first published had 7 and 9 swapped, and x86-64 UEFI firmware that
	// followed it sends 9. No real client boots EFI byte code, so 9 is
	// treated like ArchEFIx64, as common DHCP configurations do.
	ArchEFIBC Arch = 9
	// ArchEFIARM64 is 64-bit ARM UEFI PXE.
	ArchEFIARM64 Arch = 11
	// ArchEFIx64HTTP is x86-64 UEFI HTTP boot (vendor class "HTTPClient").
	ArchEFIx64HTTP Arch = 16
	// ArchEFIARM64HTTP is 64-bit ARM UEFI HTTP boot.
	ArchEFIARM64HTTP Arch = 19
)

// String returns a short name for logs and metrics labels; codes LPMOS does
// not know print as "Arch(N)" so they remain identifiable.
func (a Arch) String() string {
	switch a {
	case ArchBIOS:
		return "x86-bios"
	case ArchEFIIA32:
		return "efi-ia32"
	case ArchEFIx64:
		return "efi-x64"
	case ArchEFIBC:
		return "efi-bc"
	case ArchEFIARM64:
		return "efi-arm64"
	case ArchEFIx64HTTP:
		return "efi-x64-http"
	case ArchEFIARM64HTTP:
		return "efi-arm64-http"
	}
	return "Arch(" + strconv.Itoa(int(a)) + ")"
}

// Firmware returns the kind of boot LPMOS serves to a client of this
// architecture. Codes it cannot serve, including ArchEFIIA32, give an error
// wrapping ErrUnknownFirmware.
func (a Arch) Firmware() (Firmware, error) {
	switch a {
	case ArchBIOS:
		return FirmwareBIOS, nil
	case ArchEFIx64, ArchEFIBC:
		return FirmwareUEFI, nil
	case ArchEFIx64HTTP:
		return FirmwareUEFIHTTP, nil
	case ArchEFIARM64:
		return FirmwareARM64, nil
	case ArchEFIARM64HTTP:
		return FirmwareARM64HTTP, nil
	case ArchEFIIA32:
		return "", fmt.Errorf("%w: client architecture %d (%s): 32-bit UEFI is not supported", ErrUnknownFirmware, uint16(a), a)
	}
	return "", fmt.Errorf("%w: client architecture %d", ErrUnknownFirmware, uint16(a))
}

// Firmware is how a machine boots, as far as choosing its boot file goes.
// It is what tasks, boot policies and iPXE binary lookup speak, rather than
// raw Arch codes, because several codes boot the same way.
type Firmware string

// The firmware kinds LPMOS can boot.
const (
	// FirmwareBIOS is legacy x86 BIOS PXE, served undionly.kpxe over TFTP.
	FirmwareBIOS Firmware = "bios"
	// FirmwareUEFI is x86-64 UEFI PXE, served snponly.efi (or ipxe.efi) over TFTP.
	FirmwareUEFI Firmware = "uefi"
	// FirmwareUEFIHTTP is x86-64 UEFI HTTP boot: the boot file is a URL.
	FirmwareUEFIHTTP Firmware = "uefi-http"
	// FirmwareARM64 is 64-bit ARM UEFI PXE.
	FirmwareARM64 Firmware = "arm64"
	// FirmwareARM64HTTP is 64-bit ARM UEFI HTTP boot.
	FirmwareARM64HTTP Firmware = "arm64-http"
)

// ParseFirmware reads a firmware name from configuration, flags or an API
// request. Case and surrounding white space are ignored because these come
// from people; the result is always one of the constants.
func ParseFirmware(s string) (Firmware, error) {
	switch f := Firmware(strings.ToLower(strings.TrimSpace(s))); f {
	case FirmwareBIOS, FirmwareUEFI, FirmwareUEFIHTTP, FirmwareARM64, FirmwareARM64HTTP:
		return f, nil
	}
	return "", fmt.Errorf("%w %s: want one of bios, uefi, uefi-http, arm64, arm64-http", ErrUnknownFirmware, quoteInput(s))
}

// HTTPBoot reports whether the firmware fetches its boot file over HTTP, in
// which case DHCP must answer with a URL and echo vendor class "HTTPClient"
// instead of naming a TFTP file.
func (f Firmware) HTTPBoot() bool {
	return f == FirmwareUEFIHTTP || f == FirmwareARM64HTTP
}

// The iPXE binaries LPMOS hands to network-boot firmware, by their file
// names in Debian's ipxe package. DHCP names them as boot files and the
// TFTP server checks that its root holds them, and neither may import the
// other, so the names live here where both can agree.
const (
	// IPXEBinaryBIOS is iPXE for legacy BIOS PXE: it drives the NIC
	// through the firmware's UNDI stack, so one small binary works with
	// any NIC.
	IPXEBinaryBIOS = "undionly.kpxe"
	// IPXEBinaryUEFI is iPXE for UEFI that drives the NIC through the
	// firmware's SNP protocol. It is the default for UEFI: 174 KB instead
	// of 850 KB, about 6 s faster through slow firmware network stacks,
	// and it also works when loaded by UEFI HTTP boot.
	IPXEBinaryUEFI = "snponly.efi"
	// IPXEBinaryUEFIFull is iPXE for UEFI with its own NIC drivers, for
	// the rare firmware whose SNP is broken. Debian ships it as a symbolic
	// link to /boot/ipxe.efi.
	IPXEBinaryUEFIFull = "ipxe.efi"
)

// DefaultIPXEDir is where Debian's ipxe package (apt-get install ipxe)
// installs the binaries; servers and flags use it when given no directory.
const DefaultIPXEDir = "/usr/lib/ipxe"

// ErrNoIPXEBinary is wrapped when LPMOS knows a firmware kind but has no
// iPXE binary for it, so the DHCP server can leave such clients without a
// boot file instead of offering one they cannot run.
var ErrNoIPXEBinary = errors.New("no iPXE binary")

// IPXEBinaries returns the file names of every iPXE binary LPMOS may serve,
// in the order a directory is checked for them. The slice is a copy.
func IPXEBinaries() []string {
	return []string{IPXEBinaryBIOS, IPXEBinaryUEFI, IPXEBinaryUEFIFull}
}

// IPXEBinary returns the file name of the iPXE binary a machine with this
// firmware is given by default. UEFI HTTP boot gets the same file as UEFI
// PXE; only the way it is fetched differs.
//
// arm64 gets an error wrapping ErrNoIPXEBinary: Debian's ipxe package ships
// only x86 binaries (undionly.kpxe, ipxe.pxe, snponly.efi, ipxe.efi,
// ipxe.lkrn). Unknown firmware gets an error wrapping ErrUnknownFirmware.
func (f Firmware) IPXEBinary() (string, error) {
	switch f {
	case FirmwareBIOS:
		return IPXEBinaryBIOS, nil
	case FirmwareUEFI, FirmwareUEFIHTTP:
		return IPXEBinaryUEFI, nil
	case FirmwareARM64, FirmwareARM64HTTP:
		return "", fmt.Errorf("%w for %s: no arm64 iPXE binary in Debian's ipxe package", ErrNoIPXEBinary, f)
	}
	return "", fmt.Errorf("%w %s", ErrUnknownFirmware, quoteInput(string(f)))
}
