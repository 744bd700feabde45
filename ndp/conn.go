package ndp

import (
	"net"

	"golang.org/x/net/ipv6"
)

var allRouters = net.ParseIP("ff02::2")

// Conn is a Server's socket on one interface; open it with Listen.
type Conn struct {
	pc  *ipv6.PacketConn
	ifi *net.Interface
}

// Interface is the interface the socket is bound to.
func (c *Conn) Interface() *net.Interface { return c.ifi }

// Close closes the socket; closing twice is harmless.
func (c *Conn) Close() error { return c.pc.Close() }
