package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"golang.org/x/sys/unix"
)

// dhcpMux is the one UDP socket on port 68 that every simulated client
// sends from and receives on; replies are handed to the client waiting for
// their transaction ID.
type dhcpMux struct {
	conn net.PacketConn

	mu      sync.Mutex
	waiters map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4
}

// listenDHCP opens the clients' socket on iface, port 68, allowed to
// broadcast, with a large receive buffer so that the clients' side never
// drops a burst of replies (that would be counted against the server).
func listenDHCP(ctx context.Context, iface string) (*dhcpMux, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, iface); serr != nil {
				return
			}
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); serr != nil {
				return
			}
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20) != nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	conn, err := lc.ListenPacket(ctx, "udp4", ":68")
	if err != nil {
		return nil, fmt.Errorf("listening on %s port 68: %w", iface, err)
	}
	return &dhcpMux{conn: conn, waiters: map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4{}}, nil
}

// run reads replies until the socket is closed.
func (m *dhcpMux) run() {
	buf := make([]byte, 4096)
	for {
		n, _, err := m.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		msg, err := dhcpv4.FromBytes(buf[:n])
		if err != nil || msg.OpCode != dhcpv4.OpcodeBootReply {
			continue
		}
		m.mu.Lock()
		ch := m.waiters[msg.TransactionID]
		m.mu.Unlock()
		if ch != nil {
			select {
			case ch <- msg:
			default: // the client is not waiting for more
			}
		}
	}
}

func (m *dhcpMux) register(xid dhcpv4.TransactionID) chan *dhcpv4.DHCPv4 {
	ch := make(chan *dhcpv4.DHCPv4, 8)
	m.mu.Lock()
	m.waiters[xid] = ch
	m.mu.Unlock()
	return ch
}

func (m *dhcpMux) unregister(xid dhcpv4.TransactionID) {
	m.mu.Lock()
	delete(m.waiters, xid)
	m.mu.Unlock()
}

var broadcast = &net.UDPAddr{IP: net.IPv4bcast, Port: 67}

// errNAK is a DHCPNAK in answer to the REQUEST.
var errNAK = errors.New("DHCPNAK")

// pxeOptions are what a BIOS PXE ROM (UNDI 2.1) sends in every message.
func pxeOptions(mac net.HardwareAddr) []dhcpv4.Modifier {
	return []dhcpv4.Modifier{
		dhcpv4.WithBroadcast(true),
		dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithGeneric(dhcpv4.OptionClientNetworkInterfaceIdentifier, []byte{1, 2, 1}),
		dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, make([]byte, 16)...)),
		dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(1260)),
		dhcpv4.WithRequestedOptions(dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionTFTPServerName,
			dhcpv4.OptionBootfileName, dhcpv4.OptionVendorSpecificInformation, dhcpv4.OptionClassIdentifier),
	}
}

// dora runs DISCOVER → OFFER → REQUEST → ACK for mac, retransmitting each
// request after each of the waits (a PXE ROM's 4, 8, 16, 32 s). It returns
// the ACK.
func (m *dhcpMux) dora(ctx context.Context, mac net.HardwareAddr, waits []time.Duration) (*dhcpv4.DHCPv4, error) {
	discover, err := dhcpv4.NewDiscovery(mac, pxeOptions(mac)...)
	if err != nil {
		return nil, err
	}
	ch := m.register(discover.TransactionID)
	defer m.unregister(discover.TransactionID)
	offer, err := m.exchange(ctx, discover, ch, dhcpv4.MessageTypeOffer, waits)
	if err != nil {
		return nil, fmt.Errorf("DISCOVER: %w", err)
	}
	request, err := dhcpv4.NewRequestFromOffer(offer, pxeOptions(mac)...)
	if err != nil {
		return nil, err
	}
	ack, err := m.exchange(ctx, request, ch, dhcpv4.MessageTypeAck, waits)
	if err != nil {
		return nil, fmt.Errorf("REQUEST: %w", err)
	}
	return ack, nil
}

// exchange broadcasts msg and waits for a reply of type want (or a NAK),
// sending msg again after each wait.
func (m *dhcpMux) exchange(ctx context.Context, msg *dhcpv4.DHCPv4, ch <-chan *dhcpv4.DHCPv4, want dhcpv4.MessageType, waits []time.Duration) (*dhcpv4.DHCPv4, error) {
	b := msg.ToBytes()
	for _, wait := range waits {
		if _, err := m.conn.WriteTo(b, broadcast); err != nil {
			return nil, fmt.Errorf("sending: %w", err)
		}
		timer := time.NewTimer(wait)
		for done := false; !done; {
			select {
			case <-ctx.Done():
				timer.Stop()
				return nil, ctx.Err()
			case <-timer.C:
				done = true
			case reply := <-ch:
				switch reply.MessageType() {
				case want:
					timer.Stop()
					return reply, nil
				case dhcpv4.MessageTypeNak:
					timer.Stop()
					return nil, errNAK
				}
			}
		}
	}
	return nil, fmt.Errorf("no %s after %d tries", want, len(waits))
}
