//go:build linux

package dhcp

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenPacket opens a UDP socket on port of every local IPv4 address, bound
// to iface (SO_BINDTODEVICE) and allowed to broadcast, as Serve does for
// ports 67 and 4011. Use it to hand Serve sockets opened elsewhere, e.g.
// inside another network namespace. It deliberately sets neither
// SO_REUSEADDR nor SO_REUSEPORT: a second DHCP server on the same interface
// and port must fail to bind instead of silently sharing the packets.
func ListenPacket(ctx context.Context, iface string, port int) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if iface != "" {
				if serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, iface); serr != nil {
					serr = fmt.Errorf("binding to interface %s: %w", iface, serr)
					return
				}
			}
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := lc.ListenPacket(ctx, "udp4", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, fmt.Errorf("dhcp: listening on %s port %d: %w", iface, port, err)
	}
	return conn, nil
}
