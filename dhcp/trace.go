package dhcp

import (
	"fmt"
	"net"
	"strings"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/lpmos/lpmos"
)

// Trace tells what became of one packet from a client, for a per-machine
// boot trace (Config.Trace): what the client asked, what it was told, or
// why it was not answered.
type Trace struct {
	// MAC is the client's hardware address.
	MAC lpmos.MAC
	// Type is the packet's message type: discover, request, release,
	// decline or inform.
	Type string
	// Request is the client as the policy saw it (arch, vendor class,
	// iPXE, relay address). Its Firmware is empty for an unsupported arch.
	Request Request
	// UserClass is option 77 as sent (iPXE sends "iPXE").
	UserClass string
	// OnProxyPort is set for a packet received on ProxyPort (4011).
	OnProxyPort bool
	// Src is where the packet came from (the client's address once it has
	// one, the relay's for a relayed packet, 0.0.0.0 before that).
	Src net.IP
	// Reply is the answer's message type (offer, ack, nak), "" when the
	// packet got none.
	Reply string
	// BootFile is the boot file or URL the answer names, "" if none.
	BootFile string
	// YourIP is the address offered or acknowledged (full mode).
	YourIP net.IP
	// Outcome is what became of the packet, as Server.Packets counts it.
	Outcome Outcome
	// Reason says why a packet was not answered: the policy's
	// Decision.Reason when it ignored the client, else the server's.
	Reason string
}

// reasons say, for a packet that got no answer, why, in a line.
var reasons = map[Outcome]string{
	OutcomePolicyIgnored:   "the boot policy ignores this machine",
	OutcomeNotBootClient:   "proxy mode: not a network-boot client, or no boot file for its firmware",
	OutcomeNotForUs:        "the message is for another DHCP server",
	OutcomeNoAddress:       "no address to offer this client",
	OutcomeIgnored:         "nothing to answer",
	OutcomeUnsupportedArch: "a network-boot client of an architecture LPMOS cannot boot",
	OutcomeNoPool:          "no address pool for the client's subnet (relay giaddr)",
	OutcomePoolExhausted:   "the address pool is exhausted",
	OutcomePolicyError:     "the boot policy failed",
}

// traced finishes a packet's Trace and hands it to Config.Trace.
func (s *Server) traced(tr *Trace, mt dhcpv4.MessageType, out Outcome, reply *dhcpv4.DHCPv4) {
	if s.cfg.Trace == nil || tr.MAC.IsZero() {
		return
	}
	tr.Type = packetTypes[typeIndex(mt)]
	tr.Outcome = out
	if reply != nil {
		tr.Reply = packetReplyType(reply.MessageType())
		tr.BootFile = reply.BootFileNameOption()
		if yi := reply.YourIPAddr.To4(); yi != nil && !yi.IsUnspecified() {
			tr.YourIP = yi
		}
		if reply.MessageType() == dhcpv4.MessageTypeNak {
			tr.Reason = reply.Message()
		}
	} else if tr.Reason == "" {
		tr.Reason = reasons[out]
	}
	s.cfg.Trace(*tr)
}

func packetReplyType(mt dhcpv4.MessageType) string {
	switch mt {
	case dhcpv4.MessageTypeOffer:
		return "offer"
	case dhcpv4.MessageTypeAck:
		return "ack"
	case dhcpv4.MessageTypeNak:
		return "nak"
	}
	return mt.String()
}

// userClass renders option 77 for the trace: RFC 3004's length-prefixed
// entries joined by commas, or the bare string iPXE sends. Anything not
// printable is shown as its length only.
func userClass(v []byte) string {
	if len(v) == 0 {
		return ""
	}
	var parts []string
	rest := v
	for len(rest) > 0 {
		n := int(rest[0])
		if n == 0 || n+1 > len(rest) {
			parts = nil
			break
		}
		parts = append(parts, string(rest[1:1+n]))
		rest = rest[1+n:]
	}
	if parts == nil || !printable(strings.Join(parts, "")) {
		if printable(string(v)) {
			return string(v)
		}
		return fmt.Sprintf("(%d bytes)", len(v))
	}
	return strings.Join(parts, ",")
}

func printable(s string) bool {
	for _, c := range s {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return s != ""
}
