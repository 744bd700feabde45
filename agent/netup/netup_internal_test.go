package netup

import (
	"net"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/rfc1035label"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var testMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

// Our requests are what insomniacslk's library (the region's DHCP server
// uses it) reads as a DISCOVER and a REQUEST for the offered address.
func TestMessagesParseAsDHCP(t *testing.T) {
	c := &dhcpConn{link: net.Interface{HardwareAddr: testMAC}, xid: 0x01020304}
	d, err := dhcpv4.FromBytes(c.message(dhcpDiscover, nil, nil))
	require.NoError(t, err)
	assert.Equal(t, dhcpv4.MessageTypeDiscover, d.MessageType())
	assert.Equal(t, dhcpv4.TransactionID{1, 2, 3, 4}, d.TransactionID)
	assert.Equal(t, testMAC, d.ClientHWAddr)
	assert.Equal(t, classID, d.ClassIdentifier())
	assert.True(t, d.IsOptionRequested(dhcpv4.OptionSubnetMask))
	assert.True(t, d.IsOptionRequested(dhcpv4.OptionRouter))
	assert.True(t, d.IsOptionRequested(dhcpv4.OptionClasslessStaticRoute))

	r, err := dhcpv4.FromBytes(c.message(dhcpRequest, net.IPv4(10, 0, 0, 7), net.IPv4(10, 0, 0, 1)))
	require.NoError(t, err)
	assert.Equal(t, dhcpv4.MessageTypeRequest, r.MessageType())
	assert.True(t, r.RequestedIPAddress().Equal(net.IPv4(10, 0, 0, 7)))
	assert.True(t, r.ServerIdentifier().Equal(net.IPv4(10, 0, 0, 1)))

	// Wrapped in IPv4 + UDP 68 -> 67 with a valid header checksum.
	p := udpPacket([]byte{1, 2, 3})
	assert.Equal(t, uint16(0), ipChecksum(p[:20]), "a header with its checksum sums to zero")
	assert.Equal(t, []byte{0, 68, 0, 67, 0, 11}, p[20:26])
}

// A reply built by the library reads back with every field we use.
func TestParseReply(t *testing.T) {
	_, dst, _ := net.ParseCIDR("10.9.0.0/16")
	ack, err := dhcpv4.New(
		dhcpv4.WithReply(&dhcpv4.DHCPv4{OpCode: dhcpv4.OpcodeBootRequest, TransactionID: dhcpv4.TransactionID{9, 9, 9, 9}, ClientHWAddr: testMAC}),
		dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithYourIP(net.IPv4(10, 0, 0, 7)),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(10, 0, 0, 1)),
		dhcpv4.WithServerIP(net.IPv4(10, 0, 0, 2)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 0, 2))),
		dhcpv4.WithLeaseTime(3600),
		dhcpv4.WithOption(dhcpv4.OptDomainName("dc1.example")),
		dhcpv4.WithOption(dhcpv4.OptDNS(net.IPv4(10, 0, 0, 53), net.IPv4(10, 0, 1, 53))),
		dhcpv4.WithOption(dhcpv4.OptDomainSearch(&rfc1035label.Labels{Labels: []string{"dc1.example", "example"}})),
		dhcpv4.WithOption(dhcpv4.OptClasslessStaticRoute(
			&dhcpv4.Route{Dest: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Router: net.IPv4(10, 0, 0, 254)},
			&dhcpv4.Route{Dest: dst, Router: net.IPv4(10, 0, 0, 9)})),
	)
	require.NoError(t, err)

	typ, l, ok := parseReply(ack.ToBytes(), 0x09090909, testMAC)
	require.True(t, ok)
	assert.Equal(t, byte(dhcpAck), typ)
	assert.Equal(t, "10.0.0.7", l.IP.String())
	assert.Equal(t, net.CIDRMask(24, 32), l.Mask)
	assert.Equal(t, "[10.0.0.1]", fmtIPs(l.Routers))
	assert.Equal(t, "10.0.0.2", l.Server.String())
	assert.Equal(t, time.Hour, l.Duration)
	require.Len(t, l.Routes, 2)
	assert.Equal(t, "0.0.0.0/0", l.Routes[0].Dest.String())
	assert.Equal(t, "10.0.0.254", l.Routes[0].Router.String())
	assert.Equal(t, "10.9.0.0/16", l.Routes[1].Dest.String())
	assert.Equal(t, "10.0.0.9", l.Routes[1].Router.String())
	assert.Equal(t, "domain dc1.example\nnameserver 10.0.0.53\nnameserver 10.0.1.53\nsearch dc1.example example\n", string(resolvConf(l)))

	// Another exchange's reply, or another client's, is not ours.
	_, _, ok = parseReply(ack.ToBytes(), 0x01010101, testMAC)
	assert.False(t, ok)
	_, _, ok = parseReply(ack.ToBytes(), 0x09090909, net.HardwareAddr{2, 0, 0, 0, 0, 1})
	assert.False(t, ok)
	_, _, ok = parseReply(ack.ToBytes()[:100], 0x09090909, testMAC)
	assert.False(t, ok)

	assert.Nil(t, classlessRoutes([]byte{33, 1, 2, 3, 4, 5, 6, 7, 8}), "prefix longer than 32")
	assert.Nil(t, classlessRoutes([]byte{24, 10, 0}), "cut short")
	assert.Empty(t, resolvConf(&Lease{}))
}

func fmtIPs(ips []net.IP) string {
	s := "["
	for i, ip := range ips {
		if i > 0 {
			s += " "
		}
		s += ip.String()
	}
	return s + "]"
}

// The rtnetlink attributes are padded to 4 bytes, as the kernel expects.
func TestRtattr(t *testing.T) {
	b := rtattr([]byte{1, 2, 3, 4}, 7, []byte{10, 0, 0, 1, 9})
	require.Len(t, b, 4+12)
	assert.Equal(t, []byte{9, 0, 7, 0, 10, 0, 0, 1, 9, 0, 0, 0}, b[4:]) // length 4+5, type 7 (little endian)
}
