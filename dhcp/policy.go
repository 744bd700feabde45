package dhcp

import (
	"context"
	"fmt"
	"net"
	"net/url"
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
	// Reason says, in a line, why the client is ignored (for the boot
	// trace, Config.Trace), e.g. "no active task for this machine".
	Reason string
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

// noBoot is the policy of a full-mode server configured without one: an
// address for everyone, boot options for no one.
var noBoot = BootPolicyFunc(func(context.Context, Request) (Decision, error) { return Decision{}, nil })

// StaticPolicy gives every network-boot client the same answer, chosen by
// firmware: PXE firmware gets the iPXE binary lpmos.Firmware.IPXEBinary
// names over TFTP, UEFI HTTP boot gets that binary's URL below HTTPBaseURL,
// and iPXE gets the URL of its script.
//
// It does not guess where those URLs point: the HTTP server that serves
// scripts and binaries belongs to the caller (a region builds both URLs from
// its public URL), so ScriptURL and HTTPBaseURL are required. New rejects a
// StaticPolicy without them (see Validate); one wrapped in another policy
// returns an error wrapping ErrInvalidConfig from Boot instead, for the
// clients that need the missing URL.
type StaticPolicy struct {
	// BIOSFile overrides the TFTP file for BIOS PXE (default
	// lpmos.IPXEBinaryBIOS).
	BIOSFile string
	// UEFIFile overrides the file for x86-64 UEFI (default
	// lpmos.IPXEBinaryUEFI), over TFTP for PXE and as HTTPBaseURL +
	// UEFIFile for HTTP boot.
	UEFIFile string
	// ARM64File is the file for 64-bit ARM UEFI (over TFTP, or
	// HTTPBaseURL + ARM64File for HTTP boot). Empty (the default) gives
	// ARM machines no boot file, since Debian ships no ARM iPXE binary.
	ARM64File string
	// HTTPBaseURL prefixes the file name for UEFI HTTP boot, e.g.
	// "http://{server}/boot/ipxe/"; "{server}" is replaced with
	// Request.ServerIP. Required.
	HTTPBaseURL string
	// ScriptURL is the iPXE script's URL. "{mac}" and "${mac}" are
	// replaced with the client's MAC in canonical form, "{server}" with
	// Request.ServerIP, e.g. "http://{server}/boot/{mac}.ipxe".
	// Required.
	ScriptURL string
	// NextServer is the TFTP server; nil means the DHCP server itself.
	NextServer net.IP
	// Allow, when not nil, limits answers to these machines; every other
	// client is ignored.
	Allow map[lpmos.MAC]bool
}

// Validate reports a StaticPolicy that cannot answer every client it may be
// asked about: a missing or unusable ScriptURL or HTTPBaseURL gives an
// error wrapping ErrInvalidConfig. New calls it for a Config.Policy that is
// a StaticPolicy.
func (p StaticPolicy) Validate() error {
	// Any address and MAC will do: only the shape of the result is checked.
	sample := Request{MAC: lpmos.MAC{0x02, 0, 0, 0, 0, 1}, ServerIP: net.IPv4(192, 0, 2, 1)}
	for _, u := range []struct{ field, tmpl, example string }{
		{"ScriptURL", p.ScriptURL, `"http://{server}/boot/{mac}.ipxe"`},
		{"HTTPBaseURL", p.HTTPBaseURL, `"http://{server}/boot/ipxe/"`},
	} {
		if u.tmpl == "" {
			return fmt.Errorf("%w: StaticPolicy.%s is not set: give the URL of the HTTP server that serves iPXE, e.g. %s",
				ErrInvalidConfig, u.field, u.example)
		}
		parsed, err := url.Parse(expandURL(u.tmpl, sample))
		if err != nil {
			return fmt.Errorf("%w: StaticPolicy.%s %q: %v", ErrInvalidConfig, u.field, u.tmpl, err)
		}
		if (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
			return fmt.Errorf("%w: StaticPolicy.%s %q is not an absolute http or https URL", ErrInvalidConfig, u.field, u.tmpl)
		}
	}
	return nil
}

// Boot implements BootPolicy.
func (p StaticPolicy) Boot(_ context.Context, req Request) (Decision, error) {
	if p.Allow != nil && !p.Allow[req.MAC] {
		return Decision{Ignore: true, Reason: "not in the policy's allow list"}, nil
	}
	d := Decision{NextServer: p.NextServer}
	if req.IsIPXE {
		if p.ScriptURL == "" {
			return Decision{}, fmt.Errorf("%w: StaticPolicy.ScriptURL is not set, so iPXE cannot be told where its script is", ErrInvalidConfig)
		}
		d.BootFile = expandURL(p.ScriptURL, req)
		return d, nil
	}
	file := p.file(req.Firmware)
	if file == "" {
		return d, nil
	}
	if req.Firmware.HTTPBoot() {
		if p.HTTPBaseURL == "" {
			return Decision{}, fmt.Errorf("%w: StaticPolicy.HTTPBaseURL is not set, so UEFI HTTP boot cannot be told where %s is", ErrInvalidConfig, file)
		}
		file = strings.TrimSuffix(expandURL(p.HTTPBaseURL, req), "/") + "/" + strings.TrimPrefix(file, "/")
	}
	d.BootFile = file
	return d, nil
}

// file is the boot file for a firmware kind: the configured override, or
// else the default iPXE binary. "" means none (no binary for the firmware).
func (p StaticPolicy) file(fw lpmos.Firmware) string {
	var override string
	switch fw {
	case lpmos.FirmwareBIOS:
		override = p.BIOSFile
	case lpmos.FirmwareUEFI, lpmos.FirmwareUEFIHTTP:
		override = p.UEFIFile
	case lpmos.FirmwareARM64, lpmos.FirmwareARM64HTTP:
		override = p.ARM64File
	}
	if override != "" {
		return override
	}
	name, err := fw.IPXEBinary()
	if err != nil {
		return ""
	}
	return name
}

// expandURL fills a StaticPolicy URL template in for one client.
func expandURL(tmpl string, req Request) string {
	mac := req.MAC.String()
	return strings.NewReplacer("${mac}", mac, "{mac}", mac, "{server}", req.ServerIP.String()).Replace(tmpl)
}
