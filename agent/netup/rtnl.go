package netup

import (
	"encoding/binary"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// The two rtnetlink requests netup makes, built by hand: an IPv4 address
// (RTM_NEWADDR) and an IPv4 route (RTM_NEWROUTE), both create-or-replace,
// each acknowledged by the kernel.

var rtnlSeq atomic.Uint32

// addrReplace sets addr on the link, with its broadcast address (what
// `ip addr replace ADDR/LEN brd + dev LINK` does).
func addrReplace(index int, addr *net.IPNet) error {
	ip := addr.IP.To4()
	ones, _ := addr.Mask.Size()
	msg := make([]byte, unix.SizeofIfAddrmsg)
	msg[0] = unix.AF_INET
	msg[1] = byte(ones)
	msg[3] = unix.RT_SCOPE_UNIVERSE
	binary.NativeEndian.PutUint32(msg[4:], uint32(index))
	msg = rtattr(msg, unix.IFA_LOCAL, ip)
	msg = rtattr(msg, unix.IFA_ADDRESS, ip)
	if ones < 31 {
		brd := make(net.IP, 4)
		for i := range brd {
			brd[i] = ip[i] | ^addr.Mask[len(addr.Mask)-4+i]
		}
		msg = rtattr(msg, unix.IFA_BROADCAST, brd)
	}
	return rtnlDo(unix.RTM_NEWADDR, msg)
}

// routeReplace routes dst through gw on the link; a zero or missing gw
// makes dst directly reachable on the link (scope link).
func routeReplace(index int, dst *net.IPNet, gw net.IP) error {
	ones, _ := dst.Mask.Size()
	scope := byte(unix.RT_SCOPE_UNIVERSE)
	gw = gw.To4()
	if gw == nil || gw.Equal(net.IPv4zero) {
		gw, scope = nil, unix.RT_SCOPE_LINK
	}
	msg := make([]byte, unix.SizeofRtMsg)
	msg[0] = unix.AF_INET
	msg[1] = byte(ones) // dst_len
	msg[4] = unix.RT_TABLE_MAIN
	msg[5] = unix.RTPROT_BOOT
	msg[6] = scope
	msg[7] = unix.RTN_UNICAST
	if ones > 0 {
		msg = rtattr(msg, unix.RTA_DST, dst.IP.To4())
	}
	if gw != nil {
		msg = rtattr(msg, unix.RTA_GATEWAY, gw)
	}
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(index))
	msg = rtattr(msg, unix.RTA_OIF, oif)
	return rtnlDo(unix.RTM_NEWROUTE, msg)
}

// rtattr appends one attribute, padded to 4 bytes.
func rtattr(b []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	hdr := make([]byte, unix.SizeofRtAttr)
	binary.NativeEndian.PutUint16(hdr[0:], uint16(l))
	binary.NativeEndian.PutUint16(hdr[2:], typ)
	b = append(b, hdr...)
	b = append(b, data...)
	return append(b, make([]byte, align4(l)-l)...)
}

func align4(n int) int { return (n + 3) &^ 3 }

// rtnlDo sends one create-or-replace request and waits for the kernel's
// acknowledgement.
func rtnlDo(typ uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	seq := rtnlSeq.Add(1)
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_REPLACE)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != syscall.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return fmt.Errorf("short netlink acknowledgement")
			}
			if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
				return unix.Errno(-code)
			}
			return nil
		}
	}
}
