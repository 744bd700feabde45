//go:build linux

package ndp

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Listen opens the responder's socket on iface: a raw ICMPv6 socket bound
// to the interface (SO_BINDTODEVICE) that receives router solicitations
// only (ICMPv6 filter), in the all-routers group ff02::2 on the interface,
// with the hop limit and arrival interface of each packet reported, and
// multicasting with hop limit 255 on the interface. Use it to hand a
// Server a socket opened elsewhere, e.g. inside another network namespace
// (Config.Conn). It needs CAP_NET_RAW and IPv6 on the interface.
func Listen(ctx context.Context, iface string) (*Conn, error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("ndp: %w", err)
	}
	// The RAs go out from the interface's link-local address (RFC 4861
	// §4.2; hosts drop others); without one, IPv6 is off there.
	if !hasLinkLocal(ifi) {
		return nil, fmt.Errorf("ndp: no IPv6 link-local address on %s (IPv6 disabled there, or the link is down)", iface)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, iface)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("binding to interface %s: %w", iface, serr)
		}
		return nil
	}}
	c, err := lc.ListenPacket(ctx, "ip6:ipv6-icmp", "::")
	if err != nil {
		return nil, fmt.Errorf("ndp: raw ICMPv6 socket on %s: %w", iface, err)
	}
	pc := ipv6.NewPacketConn(c)
	conn := &Conn{pc: pc, ifi: ifi}
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeRouterSolicitation)
	for _, step := range []struct {
		what string
		err  func() error
	}{
		{"ICMPv6 filter", func() error { return pc.SetICMPFilter(&f) }},
		{"joining ff02::2", func() error { return pc.JoinGroup(ifi, &net.IPAddr{IP: allRouters}) }},
		{"control messages", func() error {
			return pc.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagSrc|ipv6.FlagInterface, true)
		}},
		{"multicast interface", func() error { return pc.SetMulticastInterface(ifi) }},
		{"multicast hop limit", func() error { return pc.SetMulticastHopLimit(ndpHopLimit) }},
		{"unicast hop limit", func() error { return pc.SetHopLimit(ndpHopLimit) }},
		{"multicast loopback", func() error { return pc.SetMulticastLoopback(false) }},
	} {
		if err := step.err(); err != nil {
			c.Close()
			return nil, fmt.Errorf("ndp: %s on %s (is IPv6 on there?): %w", step.what, iface, err)
		}
	}
	return conn, nil
}

func hasLinkLocal(ifi *net.Interface) bool {
	addrs, _ := ifi.Addrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() == nil && n.IP.IsLinkLocalUnicast() {
			return true
		}
	}
	return false
}
