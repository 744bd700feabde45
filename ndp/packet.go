package ndp

import (
	"errors"
	"fmt"
	"net"
)

// ICMPv6 message types and NDP option types of RFC 4861 this package uses.
const (
	typeRouterSolicitation  = 133
	typeRouterAdvertisement = 134

	optSourceLinkLayerAddr = 1

	// raHeaderLen is an RA's fixed part: type, code, checksum, cur hop
	// limit, flags, router lifetime, reachable time, retrans timer.
	raHeaderLen = 16
	// rsHeaderLen is an RS's fixed part: type, code, checksum, reserved.
	rsHeaderLen = 8
	// optionUnit is the unit of an NDP option's length field, in bytes.
	optionUnit = 8

	// ndpHopLimit is the only hop limit an NDP message may carry (RFC 4861
	// §6.1.1, §6.1.2): a packet with it cannot have crossed a router.
	ndpHopLimit = 255
)

// ErrMalformed is wrapped by every error ParseRouterSolicitation returns:
// the packet is not a valid router solicitation and must be ignored.
var ErrMalformed = errors.New("ndp: malformed router solicitation")

// RouterAdvertisement builds the ICMPv6 body of the router advertisement
// this package sends: cur hop limit 0 (unspecified), M=0, O=0, router
// lifetime 0, reachable time 0 and retrans timer 0 (unspecified), no
// prefix, and, when mac is a 6-byte Ethernet address, a source link-layer
// address option so receivers need not resolve the sender. The checksum is
// left 0: on a raw ICMPv6 socket the kernel computes it (RFC 3542 §3.1).
//
// What each field means to a receiver (RFC 4861 §4.2, §6.3.4):
//
//   - router lifetime 0: "not a default router"; nobody routes through us
//     and an existing default route via a real router is untouched.
//   - no prefix information option: no address is formed by SLAAC and no
//     on-link prefix is learnt.
//   - M=0, O=0: no DHCPv6 (neither stateful nor stateless) is started.
func RouterAdvertisement(mac net.HardwareAddr) []byte {
	b := make([]byte, raHeaderLen, raHeaderLen+optionUnit)
	b[0] = typeRouterAdvertisement
	// b[1] code 0, b[2:4] checksum (kernel), b[4] cur hop limit 0,
	// b[5] flags 0 (M=0, O=0), b[6:8] router lifetime 0,
	// b[8:12] reachable time 0, b[12:16] retrans timer 0.
	if len(mac) == 6 {
		b = append(b, optSourceLinkLayerAddr, 1)
		b = append(b, mac...)
	}
	return b
}

// Solicitation is a parsed router solicitation.
type Solicitation struct {
	// LinkLayerAddr is the sender's source link-layer address option, if
	// it sent one.
	LinkLayerAddr net.HardwareAddr
}

// ParseRouterSolicitation validates an ICMPv6 message received on a raw
// socket (the IPv6 header already stripped) as a router solicitation by
// the rules of RFC 4861 §6.1.1, which a router must apply: the IP hop
// limit is 255, the ICMP type is 133 and the code 0, the message is at
// least 8 bytes, every option has a non-zero length and fits, and a
// solicitation from the unspecified address (::) carries no source
// link-layer address option. The checksum is the kernel's to verify on a
// raw ICMPv6 socket. src is the IPv6 source address; hopLimit the IPv6
// hop limit (from the socket's control message). Errors wrap ErrMalformed.
func ParseRouterSolicitation(b []byte, src net.IP, hopLimit int) (Solicitation, error) {
	var s Solicitation
	switch {
	case len(b) < rsHeaderLen:
		return s, fmt.Errorf("%w: %d bytes, want at least %d", ErrMalformed, len(b), rsHeaderLen)
	case b[0] != typeRouterSolicitation:
		return s, fmt.Errorf("%w: ICMPv6 type %d, want %d", ErrMalformed, b[0], typeRouterSolicitation)
	case b[1] != 0:
		return s, fmt.Errorf("%w: ICMPv6 code %d, want 0", ErrMalformed, b[1])
	case hopLimit != ndpHopLimit:
		return s, fmt.Errorf("%w: hop limit %d, want %d", ErrMalformed, hopLimit, ndpHopLimit)
	}
	for opts := b[rsHeaderLen:]; len(opts) > 0; {
		if len(opts) < 2 || opts[1] == 0 || int(opts[1])*optionUnit > len(opts) {
			return s, fmt.Errorf("%w: bad option length", ErrMalformed)
		}
		n := int(opts[1]) * optionUnit
		if opts[0] == optSourceLinkLayerAddr {
			s.LinkLayerAddr = net.HardwareAddr(append([]byte(nil), opts[2:n]...))
		}
		opts = opts[n:]
	}
	if src != nil && src.IsUnspecified() && s.LinkLayerAddr != nil {
		return s, fmt.Errorf("%w: source link-layer address option from the unspecified address", ErrMalformed)
	}
	return s, nil
}
