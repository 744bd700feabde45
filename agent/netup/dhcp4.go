package netup

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/insomniacslk/dhcp/rfc1035label"
	"golang.org/x/sys/unix"
)

// A DHCPv4 client (RFC 2131) for one job: get a lease for a link that has
// no address yet. It speaks through a packet socket (its own IPv4 and UDP
// headers, to the broadcast MAC), like u-root's and insomniacslk's
// clients, so it hears offers sent to the link's MAC before any address
// is configured. It does not renew: the agent's stay in RAM is shorter
// than a lease.

// Lease is what a DHCP server granted.
type Lease struct {
	IP       net.IP
	Mask     net.IPMask // nil when the server sent none
	Routers  []net.IP
	DNS      []net.IP
	Domain   string
	Search   []string
	Server   net.IP  // server identifier (option 54)
	Routes   []Route // classless static routes (option 121)
	Duration time.Duration
}

// Route is one classless static route: Router 0.0.0.0 means on-link.
type Route struct {
	Dest   *net.IPNet
	Router net.IP
}

// ErrNAK: the server refused the request.
var ErrNAK = errors.New("DHCP server answered NAK")

// DHCP message types and options used here.
const (
	dhcpDiscover = 1
	dhcpOffer    = 2
	dhcpRequest  = 3
	dhcpAck      = 5
	dhcpNak      = 6

	optSubnetMask   = 1
	optRouter       = 3
	optDNS          = 6
	optHostname     = 12
	optDomainName   = 15
	optRequestedIP  = 50
	optLeaseTime    = 51
	optMessageType  = 53
	optServerID     = 54
	optParamRequest = 55
	optMaxSize      = 57
	optClassID      = 60
	optTFTPServer   = 66
	optBootfile     = 67
	optSearch       = 119
	optClassless    = 121
	optEnd          = 255

	// classID is what u-root's dhclient sent; servers may match on it.
	classID = "PXE UROOT"
)

var magicCookie = []byte{99, 130, 83, 99}

// dhcpTimeout and dhcpRetries are per step (DISCOVER, REQUEST): wait this
// long for an answer, send this many times.
const (
	dhcpTimeout = 5 * time.Second
	dhcpRetries = 6
)

// lease runs DISCOVER/OFFER/REQUEST/ACK on the link and returns the lease.
func lease(ctx context.Context, link net.Interface) (*Lease, error) {
	if len(link.HardwareAddr) != 6 {
		return nil, fmt.Errorf("%s has no Ethernet address", link.Name)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
	if err != nil {
		return nil, fmt.Errorf("packet socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: link.Index}); err != nil {
		return nil, fmt.Errorf("bind packet socket: %w", err)
	}
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, err
	}
	c := &dhcpConn{fd: fd, link: link}
	var xid [4]byte
	rand.Read(xid[:])
	c.xid = binary.BigEndian.Uint32(xid[:])

	offer, err := c.step(ctx, c.message(dhcpDiscover, nil, nil), dhcpOffer)
	if err != nil {
		return nil, fmt.Errorf("no offer: %w", err)
	}
	ack, err := c.step(ctx, c.message(dhcpRequest, offer.IP, offer.Server), dhcpAck)
	if err != nil {
		return nil, fmt.Errorf("no acknowledgement of %s: %w", offer.IP, err)
	}
	return ack, nil
}

type dhcpConn struct {
	fd   int
	link net.Interface
	xid  uint32
}

// step broadcasts msg until an answer of type want arrives (or a NAK).
func (c *dhcpConn) step(ctx context.Context, msg []byte, want byte) (*Lease, error) {
	pkt := udpPacket(msg)
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: c.link.Index, Halen: 6}
	copy(to.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	buf := make([]byte, 1<<16)
	for try := 0; try < dhcpRetries; try++ {
		if err := unix.Sendto(c.fd, pkt, 0, to); err != nil {
			return nil, fmt.Errorf("send: %w", err)
		}
		deadline := time.Now().Add(dhcpTimeout)
		for time.Now().Before(deadline) {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			n, _, err := unix.Recvfrom(c.fd, buf, 0)
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("receive: %w", err)
			}
			typ, l, ok := c.parse(buf[:n])
			switch {
			case !ok:
			case typ == dhcpNak:
				return nil, ErrNAK
			case typ == want:
				return l, nil
			}
		}
	}
	return nil, fmt.Errorf("no answer after %d tries of %s", dhcpRetries, dhcpTimeout)
}

// message builds a BOOTREQUEST; a REQUEST names the offered address and
// its server.
func (c *dhcpConn) message(typ byte, ip, server net.IP) []byte {
	m := make([]byte, 236, 300)
	m[0], m[1], m[2] = 1, 1, 6 // BOOTREQUEST, Ethernet, 6-byte address
	binary.BigEndian.PutUint32(m[4:], c.xid)
	copy(m[28:], c.link.HardwareAddr)
	m = append(m, magicCookie...)
	m = append(m, optMessageType, 1, typ)
	m = append(m, optMaxSize, 2, 0x05, 0xdc) // 1500
	m = append(m, optClassID, byte(len(classID)))
	m = append(m, classID...)
	params := []byte{optSubnetMask, optRouter, optDNS, optHostname, optDomainName, optSearch, optClassless, optLeaseTime, optTFTPServer, optBootfile}
	m = append(m, optParamRequest, byte(len(params)))
	m = append(m, params...)
	if ip4 := ip.To4(); ip4 != nil {
		m = append(m, optRequestedIP, 4)
		m = append(m, ip4...)
	}
	if s4 := server.To4(); s4 != nil {
		m = append(m, optServerID, 4)
		m = append(m, s4...)
	}
	return append(m, optEnd)
}

// udpPacket wraps a DHCP message in UDP 68→67 and IPv4 0.0.0.0 →
// 255.255.255.255 (the UDP checksum is optional in IPv4 and left zero).
func udpPacket(msg []byte) []byte {
	p := make([]byte, 28+len(msg))
	p[0] = 0x45 // IPv4, 20-byte header
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64 // TTL
	p[9] = unix.IPPROTO_UDP
	copy(p[16:20], net.IPv4bcast.To4())
	binary.BigEndian.PutUint16(p[10:], ipChecksum(p[:20]))
	binary.BigEndian.PutUint16(p[20:], 68)
	binary.BigEndian.PutUint16(p[22:], 67)
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(msg)))
	copy(p[28:], msg)
	return p
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// parse reads an IPv4/UDP packet; ok is false for anything that is not a
// BOOTREPLY to port 68 for this exchange.
func (c *dhcpConn) parse(p []byte) (typ byte, l *Lease, ok bool) {
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_UDP {
		return 0, nil, false
	}
	ihl := int(p[0]&0x0f) * 4
	if len(p) < ihl+8 || binary.BigEndian.Uint16(p[ihl+2:]) != 68 {
		return 0, nil, false
	}
	return parseReply(p[ihl+8:], c.xid, c.link.HardwareAddr)
}

// parseReply reads a DHCP reply to xid and mac.
func parseReply(m []byte, xid uint32, mac net.HardwareAddr) (typ byte, l *Lease, ok bool) {
	if len(m) < 240 || m[0] != 2 || binary.BigEndian.Uint32(m[4:]) != xid ||
		!bytes.Equal(m[28:34], mac) || !bytes.Equal(m[236:240], magicCookie) {
		return 0, nil, false
	}
	l = &Lease{IP: net.IP(bytes.Clone(m[16:20]))}
	opts := m[240:]
	for len(opts) > 0 {
		code := opts[0]
		if code == 0 { // pad
			opts = opts[1:]
			continue
		}
		if code == optEnd || len(opts) < 2 || len(opts) < 2+int(opts[1]) {
			break
		}
		v := opts[2 : 2+int(opts[1])]
		opts = opts[2+len(v):]
		switch code {
		case optMessageType:
			if len(v) == 1 {
				typ = v[0]
			}
		case optSubnetMask:
			if len(v) == 4 {
				l.Mask = net.IPMask(bytes.Clone(v))
			}
		case optRouter:
			l.Routers = ips(v)
		case optDNS:
			l.DNS = ips(v)
		case optDomainName:
			l.Domain = string(bytes.TrimRight(v, "\x00"))
		case optServerID:
			if len(v) == 4 {
				l.Server = net.IP(bytes.Clone(v))
			}
		case optLeaseTime:
			if len(v) == 4 {
				l.Duration = time.Duration(binary.BigEndian.Uint32(v)) * time.Second
			}
		case optSearch:
			if labels, err := rfc1035label.FromBytes(v); err == nil {
				l.Search = labels.Labels
			}
		case optClassless:
			l.Routes = classlessRoutes(v)
		}
	}
	return typ, l, typ != 0
}

func ips(v []byte) []net.IP {
	var out []net.IP
	for ; len(v) >= 4; v = v[4:] {
		out = append(out, net.IP(bytes.Clone(v[:4])))
	}
	return out
}

// classlessRoutes decodes option 121 (RFC 3442): per route the prefix
// length, the significant octets of the destination, and the router.
// A malformed option yields no routes.
func classlessRoutes(v []byte) []Route {
	var out []Route
	for len(v) > 0 {
		width := int(v[0])
		n := (width + 7) / 8
		if width > 32 || len(v) < 1+n+4 {
			return nil
		}
		dst := make(net.IP, 4)
		copy(dst, v[1:1+n])
		out = append(out, Route{
			Dest:   &net.IPNet{IP: dst, Mask: net.CIDRMask(width, 32)},
			Router: net.IP(bytes.Clone(v[1+n : 1+n+4])),
		})
		v = v[1+n+4:]
	}
	return out
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
