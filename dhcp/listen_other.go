//go:build !linux

package dhcp

import (
	"context"
	"errors"
	"net"
)

// ListenPacket needs SO_BINDTODEVICE, which only Linux has; elsewhere hand
// the server sockets through Config.Conn and Config.ProxyConn.
func ListenPacket(context.Context, string, int) (net.PacketConn, error) {
	return nil, errors.New("dhcp: binding to an interface is only supported on Linux; set Config.Conn")
}
