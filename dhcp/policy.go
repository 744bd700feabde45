package dhcp

import (
	"context"
	"net"
	"strings"

	"github.com/lpmos/lpmos"
)

// BootPolicy decides what a network-boot client is told. The server asks it
// once per DISCOVER, REQUEST or INFORM from a client that is booting from the
// network (Request.Boot is true), from one of its workers, so Boot must be
// safe for concurrent use and quick: it runs on the DHCP hot path, and a slow
// answer delays every client queued behind it. The context ends when the
// server stops or the request's time budget (Config.PolicyTimeout) runs out.
//
// An error drops the packet (the client will retry); it is counted in
// Stats.PolicyErrors.
type BootPolicy interface {
	Boot(ctx context.Context, req Request) (Decision, error)
}

// BootPolicyFunc lets a plain function be a BootPolicy.
type BootPolicyFunc func(ctx context.Context, req Request) (Decision, error)

// Boot calls f.
func (f BootPolicyFunc) Boot(ctx context.Context, req Request) (Decision, error) {
	return f(ctx, req)
}

// Request describes a client asking for boot instructions.
type Request struct {
	// MAC is the client's hardware address (chaddr).
	MAC lpmos.MAC
	// Arch is the client architecture from option 93. When the option is
	// absent it is ArchBIOS for PXE and iPXE clients (as PXE 2.1 says) and
	// ArchEFIx64HTTP for HTTP boot clients; HasArch tells the cases apart.
	Arch    lpmos.Arch
	HasArch bool
	// Firmware is how the client boots, derived from Arch. HTTP boot
	// firmware (Firmware.HTTPBoot) needs a URL as boot file.
	Firmware lpmos.Firmware
	// IsPXE is set when the vendor class (option 60) starts with
	// "PXEClient": firmware PXE, and also iPXE, which sends it too.
	IsPXE bool
	// IsHTTPClient is set when the vendor class starts with "HTTPClient":
	// UEFI HTTP boot.
	IsHTTPClient bool
	// IsIPXE is set when the user class (option 77) is "iPXE": the client
	// is iPXE, already loaded, and wants the URL of its script.
	IsIPXE bool
	// VendorClass is option 60 as sent, e.g. "PXEClient:Arch:00007:UNDI:003016".
	VendorClass string
	// RelayAddr is the relay agent's address (giaddr), nil when the
	// client is on the server's own link.
	RelayAddr net.IP
	// ClientID is option 61 as sent, nil if absent.
	ClientID []byte
	// UUID is option 97 (client machine identifier) as sent: a type byte
	// (0) followed by the 16-byte SMBIOS UUID. Nil if absent.
	UUID []byte
	// ServerIP is the address this server answers from; policies use it
	// to build URLs pointing back at the region.
	ServerIP net.IP
}

// Boot reports whether the client is booting from the network; the policy is
// only asked about such clients.
func (r Request) Boot() bool {
	return r.HasArch || r.IsPXE || r.IsHTTPClient || r.IsIPXE
}

// Decision is a BootPolicy's answer.
type Decision struct {
	// Ignore tells the server not to answer this client at all: no boot
	// options and, in full mode, no address either, so firmware falls
	// through to its next boot device (typically the local disk). A
	// region sets it for machines it has no active task for.
	Ignore bool
	// BootFile is what the client loads next: a TFTP file name such as
	// "undionly.kpxe" or "snponly.efi" for PXE firmware, or a full
	// http:// URL for UEFI HTTP boot and for iPXE (its script). Empty
	// means no boot options: full mode still leases an address, proxy
	// mode does not answer.
	BootFile string
	// NextServer is the TFTP server (siaddr, option 66). Nil means the
	// DHCP server's own address.
	NextServer net.IP
}

// Default boot files of StaticPolicy: the iPXE binaries Debian's ipxe
// package ships in /usr/lib/ipxe. snponly.efi uses the firmware's network
// driver (SNP), works on every UEFI NIC that can PXE-boot, and is several
// seconds faster than ipxe.efi to load.
const (
	DefaultBIOSFile = "undionly.kpxe"
	DefaultUEFIFile = "snponly.efi"
)

// StaticPolicy gives every network-boot client the same files, chosen by
// firmware. Its zero value serves the iPXE binaries over TFTP from the DHCP
// server's own address and the region's HTTP endpoints on port 8081 of
// that address (the example binaries' --region-listen default).
type StaticPolicy struct {
	// BIOSFile is the TFTP file for BIOS PXE; default DefaultBIOSFile.
	BIOSFile string
	// UEFIFile is the TFTP file for x86-64 UEFI PXE; default
	// DefaultUEFIFile. UEFI HTTP boot gets HTTPBaseURL + UEFIFile.
	UEFIFile string
	// ARM64File is the file for 64-bit ARM UEFI (over TFTP, or
	// HTTPBaseURL + ARM64File for HTTP boot). Empty (the default) gives
	// ARM machines no boot file, since Debian ships no ARM iPXE binary.
	ARM64File string
	// HTTPBaseURL prefixes the file name for UEFI HTTP boot; default
	// "http://SERVER:8081/" where SERVER is Request.ServerIP.
	HTTPBaseURL string
	// ScriptURL is the iPXE script's URL. "{mac}" and "${mac}" are
	// replaced with the client's MAC in canonical form, "{server}" with
	// Request.ServerIP. Default "http://{server}:8081/boot/{mac}.ipxe".
	ScriptURL string
	// NextServer is the TFTP server; nil means the DHCP server itself.
	NextServer net.IP
	// Allow, when not nil, limits answers to these machines; every other
	// client is ignored.
	Allow map[lpmos.MAC]bool
}

// Boot implements BootPolicy.
func (p StaticPolicy) Boot(_ context.Context, req Request) (Decision, error) {
	if p.Allow != nil && !p.Allow[req.MAC] {
		return Decision{Ignore: true}, nil
	}
	d := Decision{NextServer: p.NextServer}
	server := req.ServerIP.String()
	if req.IsIPXE {
		tmpl := p.ScriptURL
		if tmpl == "" {
			tmpl = "http://{server}:8081/boot/{mac}.ipxe"
		}
		d.BootFile = strings.NewReplacer("${mac}", req.MAC.String(), "{mac}", req.MAC.String(),
			"{server}", server).Replace(tmpl)
		return d, nil
	}
	var file string
	switch req.Firmware {
	case lpmos.FirmwareBIOS:
		file = orDefault(p.BIOSFile, DefaultBIOSFile)
	case lpmos.FirmwareUEFI, lpmos.FirmwareUEFIHTTP:
		file = orDefault(p.UEFIFile, DefaultUEFIFile)
	case lpmos.FirmwareARM64, lpmos.FirmwareARM64HTTP:
		file = p.ARM64File
	}
	if file == "" {
		return d, nil
	}
	if req.Firmware.HTTPBoot() {
		base := p.HTTPBaseURL
		if base == "" {
			base = "http://" + server + ":8081/"
		}
		file = strings.TrimSuffix(base, "/") + "/" + strings.TrimPrefix(file, "/")
	}
	d.BootFile = file
	return d, nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
