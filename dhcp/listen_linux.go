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
//
// The socket's receive buffer is ReceiveBuffer bytes (see setReceiveBuffer),
// so that a burst of requests (a rack powering on) waits in the kernel
// while the workers catch up instead of being dropped.
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
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr != nil {
				return
			}
			serr = setReceiveBuffer(int(fd), ReceiveBuffer)
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

// setReceiveBuffer asks for a receive buffer of size bytes. SO_RCVBUFFORCE
// (which needs CAP_NET_ADMIN, e.g. root) may exceed net.core.rmem_max;
// without the capability it fails with EPERM and SO_RCVBUF is used instead,
// which the kernel silently caps at net.core.rmem_max. Either way the kernel
// doubles the value for its bookkeeping, so getsockopt reports twice what
// was granted.
func setReceiveBuffer(fd, size int) error {
	err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
	if err == nil {
		return nil
	}
	if err = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, size); err != nil {
		return fmt.Errorf("setting the receive buffer to %d bytes: %w", size, err)
	}
	return nil
}
