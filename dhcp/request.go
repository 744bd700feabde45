package dhcp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/lpmos/lpmos"
)

// Option codes the server reads or writes that insomniacslk names
// differently or not at all.
const (
	optVendorClass  = 60
	optVendorSpec   = 43
	optUserClass    = 77
	optClientArch   = 93
	optClientUUID   = 97
	optIPXEEncap    = 175 // iPXE's encapsulated options
	ipxeNoPXEDHCP   = 176 // sub-option of 175: do not wait for ProxyDHCP
	pxeDiscoveryCtl = 6   // sub-option of 43: PXE_DISCOVERY_CONTROL
)

// errMalformed is wrapped by parse errors; such packets are dropped and
// counted in Stats.Malformed.
var errMalformed = errors.New("malformed DHCP packet")

// errUnsupportedArch marks a network-boot client whose architecture LPMOS
// cannot boot; it is not answered.
var errUnsupportedArch = errors.New("unsupported client architecture")

// parsePacket decodes and sanity-checks a client's packet.
func parsePacket(b []byte) (*dhcpv4.DHCPv4, error) {
	if len(b) < 240 {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the fixed header", errMalformed, len(b))
	}
	// The fixed header's hlen is checked here because the library
	// silently clamps it.
	if b[1] != byte(iana.HWTypeEthernet) || b[2] != 6 {
		return nil, fmt.Errorf("%w: hardware type %d length %d, want Ethernet (1, 6)", errMalformed, b[1], b[2])
	}
	p, err := dhcpv4.FromBytes(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if p.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, fmt.Errorf("%w: op code %d is not BOOTREQUEST", errMalformed, p.OpCode)
	}
	switch mt := p.MessageType(); mt {
	case dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeDecline,
		dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform:
	case dhcpv4.MessageTypeNone:
		return nil, fmt.Errorf("%w: no DHCP message type (BOOTP is not served)", errMalformed)
	default:
		return nil, fmt.Errorf("%w: message type %s is not a client message", errMalformed, mt)
	}
	if v := p.Options.Get(dhcpv4.OptionDHCPMessageType); len(v) != 1 {
		return nil, fmt.Errorf("%w: message type option of %d bytes", errMalformed, len(v))
	}
	return p, nil
}

// describe builds the policy's view of a client. It fails for packets whose
// PXE options are malformed (errMalformed) and for network-boot clients of
// an architecture LPMOS cannot boot (errUnsupportedArch).
func describe(p *dhcpv4.DHCPv4, serverIP net.IP) (Request, error) {
	mac, err := lpmos.MACFromHardwareAddr(p.ClientHWAddr)
	if err != nil {
		return Request{}, fmt.Errorf("%w: %v", errMalformed, err)
	}
	r := Request{MAC: mac, ServerIP: serverIP}
	r.VendorClass = string(p.Options[optVendorClass])
	r.IsPXE = strings.HasPrefix(r.VendorClass, "PXEClient")
	r.IsHTTPClient = strings.HasPrefix(r.VendorClass, "HTTPClient")
	r.IsIPXE = hasIPXEUserClass(p.Options[optUserClass])
	if v := p.Options.Get(dhcpv4.OptionClientIdentifier); v != nil {
		r.ClientID = bytes.Clone(v)
	}
	if v := p.Options[optClientUUID]; v != nil {
		r.UUID = bytes.Clone(v)
	}
	if gi := p.GatewayIPAddr.To4(); gi != nil && !gi.IsUnspecified() {
		r.RelayAddr = gi
	}
	if v, ok := p.Options[optClientArch]; ok {
		// RFC 4578 allows a list; the first entry is the one to boot.
		if len(v) < 2 || len(v)%2 != 0 {
			return Request{}, fmt.Errorf("%w: option 93 of %d bytes", errMalformed, len(v))
		}
		r.Arch, r.HasArch = lpmos.Arch(binary.BigEndian.Uint16(v)), true
	} else if r.IsHTTPClient {
		r.Arch = lpmos.ArchEFIx64HTTP
	}
	// Without option 93, PXE 2.1 clients and iPXE are BIOS (ArchBIOS is
	// the zero value).
	if !r.Boot() {
		return r, nil
	}
	if r.Firmware, err = r.Arch.Firmware(); err != nil {
		return r, fmt.Errorf("%w: %v", errUnsupportedArch, err)
	}
	return r, nil
}

// hasIPXEUserClass recognises iPXE's user class, which iPXE sends as the
// bare string "iPXE" although RFC 3004 wants length-prefixed entries; both
// forms are accepted.
func hasIPXEUserClass(v []byte) bool {
	if string(v) == "iPXE" {
		return true
	}
	for len(v) > 0 {
		n := int(v[0])
		if n == 0 || n+1 > len(v) {
			return false
		}
		if string(v[1:1+n]) == "iPXE" {
			return true
		}
		v = v[1+n:]
	}
	return false
}
