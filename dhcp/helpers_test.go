package dhcp

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
)

// Fixed values so that packets and golden files are reproducible.
var (
	testXID     = dhcpv4.TransactionID{0x12, 0x34, 0x56, 0x78}
	testMAC     = lpmos.MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	testMAC2    = lpmos.MAC{0x52, 0x54, 0x00, 0x12, 0x34, 0x57}
	testUUID    = append([]byte{0}, []byte("0123456789abcdef")...)
	testServer  = net.IPv4(10, 77, 0, 1).To4()
	testEpoch   = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	testRelayGi = net.IPv4(10, 88, 0, 2).To4()
)

// testPolicy answers as a region listening on port 8081 of the server's
// address does, so the golden replies carry the URLs real deployments see.
var testPolicy = StaticPolicy{
	HTTPBaseURL: "http://{server}:8081/",
	ScriptURL:   "http://{server}:8081/boot/{mac}.ipxe",
}

// testConfig is a full-mode configuration on 10.77.0.0/24 with one relay
// pool on 10.88.0.0/24, as the namespace tests use.
func testConfig() Config {
	return Config{
		Interface: "",
		ServerIP:  testServer,
		Mode:      ModeFull,
		Policy:    testPolicy,
		Pool: Pool{
			Start: net.IPv4(10, 77, 0, 100), End: net.IPv4(10, 77, 0, 199),
			Netmask: net.CIDRMask(24, 32), Router: net.IPv4(10, 77, 0, 254),
			DNS: []net.IP{net.IPv4(10, 77, 0, 53)}, DomainName: "lab.test", LeaseTime: time.Hour,
		},
		RelayPools: []Pool{{
			Start: net.IPv4(10, 88, 0, 100), End: net.IPv4(10, 88, 0, 199),
			Netmask: net.CIDRMask(24, 32), Router: net.IPv4(10, 88, 0, 1), LeaseTime: 2 * time.Hour,
		}},
	}
}

// newTestServer builds a server without sockets, for calling handle
// directly, with a fixed clock.
func newTestServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Conn == nil {
		cfg.Conn = nopConn{}
		cfg.ProxyConn = nopConn{}
	}
	s, err := New(cfg)
	require.NoError(t, err)
	s.clock = func() time.Time { return testEpoch }
	return s
}

// nopConn satisfies Config.Conn for servers that never Serve.
type nopConn struct{ net.PacketConn }

// clientPacket builds a client message with the fixed xid and MAC.
func clientPacket(mt dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	p := &dhcpv4.DHCPv4{
		OpCode:        dhcpv4.OpcodeBootRequest,
		HWType:        1,
		TransactionID: testXID,
		ClientIPAddr:  net.IPv4zero,
		YourIPAddr:    net.IPv4zero,
		ServerIPAddr:  net.IPv4zero,
		GatewayIPAddr: net.IPv4zero,
		ClientHWAddr:  testMAC.HardwareAddr(),
		Options:       make(dhcpv4.Options),
	}
	p.UpdateOption(dhcpv4.OptMessageType(mt))
	for _, m := range mods {
		m(p)
	}
	return p
}

// Modifiers describing typical clients.
func withArch(a lpmos.Arch) dhcpv4.Modifier {
	return func(p *dhcpv4.DHCPv4) {
		p.Options[optClientArch] = binary.BigEndian.AppendUint16(nil, uint16(a))
	}
}

func withVendor(v string) dhcpv4.Modifier {
	return func(p *dhcpv4.DHCPv4) { p.Options[optVendorClass] = []byte(v) }
}

func withUUID(p *dhcpv4.DHCPv4) { p.Options[optClientUUID] = testUUID }

func withIPXE(p *dhcpv4.DHCPv4) { p.Options[optUserClass] = []byte("iPXE") }

func withMAC(m lpmos.MAC) dhcpv4.Modifier {
	return func(p *dhcpv4.DHCPv4) { p.ClientHWAddr = m.HardwareAddr() }
}

func withXID(x uint32) dhcpv4.Modifier {
	return func(p *dhcpv4.DHCPv4) { binary.BigEndian.PutUint32(p.TransactionID[:], x) }
}

func withRequested(ip net.IP) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(ip))
}

func withServerID(ip net.IP) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptServerIdentifier(ip))
}

func withRelay(gi net.IP, circuit, remote string) dhcpv4.Modifier {
	return func(p *dhcpv4.DHCPv4) {
		p.GatewayIPAddr = gi
		p.HopCount = 1
		p.Options[dhcpv4.OptionRelayAgentInformation.Code()] = append(
			append([]byte{1, byte(len(circuit))}, circuit...), append([]byte{2, byte(len(remote))}, remote...)...)
	}
}

// Typical clients.
var (
	biosPXE  = []dhcpv4.Modifier{withArch(lpmos.ArchBIOS), withVendor("PXEClient:Arch:00000:UNDI:002001"), withUUID}
	uefiPXE  = []dhcpv4.Modifier{withArch(lpmos.ArchEFIx64), withVendor("PXEClient:Arch:00007:UNDI:003016"), withUUID}
	uefiBC   = []dhcpv4.Modifier{withArch(lpmos.ArchEFIBC), withVendor("PXEClient:Arch:00009:UNDI:003016")}
	uefiHTTP = []dhcpv4.Modifier{withArch(lpmos.ArchEFIx64HTTP), withVendor("HTTPClient:Arch:00016:UNDI:003001"), withUUID}
	ipxeBIOS = []dhcpv4.Modifier{withArch(lpmos.ArchBIOS), withVendor("PXEClient:Arch:00000:UNDI:002001"), withIPXE}
	plain    = []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClientIdentifier(append([]byte{1}, testMAC[:]...)))}
)

// handleBytes runs a packet through the handler.
func handleBytes(s *Server, p *dhcpv4.DHCPv4, src *net.UDPAddr, proxyPort bool) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	if src == nil {
		src = &net.UDPAddr{IP: net.IPv4zero, Port: ClientPort}
	}
	reply, dst := s.handle(context.Background(), p.ToBytes(), src, proxyPort)
	if reply == nil {
		return nil, nil
	}
	// Decode what would go on the wire, so tests see exactly that.
	wire, err := dhcpv4.FromBytes(reply.ToBytes())
	if err != nil {
		panic(fmt.Sprintf("reply does not decode: %v", err))
	}
	return wire, dst
}

var optionNames = map[uint8]string{
	1: "subnet mask", 3: "router", 6: "dns", 15: "domain name", 43: "vendor specific (PXE)",
	50: "requested ip", 51: "lease time", 53: "message type", 54: "server identifier",
	56: "message", 58: "renewal (T1)", 59: "rebinding (T2)", 60: "vendor class", 61: "client identifier",
	66: "tftp server", 67: "bootfile", 82: "relay agent info", 97: "client uuid", 175: "ipxe encapsulated",
}

// dump renders a reply and its destination readably, for golden files.
func dump(p *dhcpv4.DHCPv4, dst *net.UDPAddr) string {
	if p == nil {
		return "no reply\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "to      %v\n", dst)
	fmt.Fprintf(&b, "op      %d (%s)  htype %d  hlen %d  hops %d\n", p.OpCode, p.OpCode, p.HWType, len(p.ClientHWAddr), p.HopCount)
	fmt.Fprintf(&b, "xid     %s  secs %d  flags %#04x\n", p.TransactionID, p.NumSeconds, p.Flags)
	fmt.Fprintf(&b, "ciaddr  %v\nyiaddr  %v\nsiaddr  %v\ngiaddr  %v\n", p.ClientIPAddr, p.YourIPAddr, p.ServerIPAddr, p.GatewayIPAddr)
	fmt.Fprintf(&b, "chaddr  %v\nsname   %q\nfile    %q\n", p.ClientHWAddr, p.ServerHostName, p.BootFileName)
	codes := make([]int, 0, len(p.Options))
	for c := range p.Options {
		codes = append(codes, int(c))
	}
	sort.Ints(codes)
	for _, c := range codes {
		v := p.Options[uint8(c)]
		name := optionNames[uint8(c)]
		if name == "" {
			name = "?"
		}
		fmt.Fprintf(&b, "opt %3d %-22s % x", c, name, v)
		switch c {
		case 1, 3, 6, 50, 54:
			var ips []string
			for i := 0; i+4 <= len(v); i += 4 {
				ips = append(ips, net.IP(v[i:i+4]).String())
			}
			fmt.Fprintf(&b, "  = %s", strings.Join(ips, ","))
		case 51, 58, 59:
			if len(v) == 4 {
				fmt.Fprintf(&b, "  = %v", time.Duration(binary.BigEndian.Uint32(v))*time.Second)
			}
		case 53:
			if len(v) == 1 {
				fmt.Fprintf(&b, "  = %s", dhcpv4.MessageType(v[0]))
			}
		case 15, 56, 60, 66, 67:
			fmt.Fprintf(&b, "  = %q", v)
		}
		b.WriteString("\n")
	}
	return b.String()
}
