package dhcp

import (
	"flag"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with the current replies")

// TestReplyGolden pins every kind of answer byte for byte (as a readable
// dump) against testdata/*.golden. A diff here is a wire-format change:
// check it against what the package documentation says firmware needs
// before running with -update.
func TestReplyGolden(t *testing.T) {
	proxyCfg := Config{ServerIP: testServer, Mode: ModeProxy, Policy: testPolicy}
	type step struct {
		pkt       *dhcpv4.DHCPv4
		src       *net.UDPAddr
		proxyPort bool
	}
	tests := []struct {
		name  string
		cfg   Config
		setup []step // run first, replies not checked (e.g. the DISCOVER before a REQUEST)
		step  step
	}{
		{name: "full-bios-discover", cfg: testConfig(),
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, biosPXE...)}},
		{name: "full-uefi-discover", cfg: testConfig(),
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, uefiPXE...)}},
		{name: "full-uefi-arch9-discover", cfg: testConfig(),
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, uefiBC...)}},
		{name: "full-uefi-http-discover", cfg: testConfig(),
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, uefiHTTP...)}},
		{name: "full-ipxe-discover", cfg: testConfig(),
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, ipxeBIOS...)}},
		{name: "full-plain-discover", cfg: testConfig(),
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, plain...)}},
		{name: "full-uefi-request-ack", cfg: testConfig(),
			setup: []step{{pkt: clientPacket(dhcpv4.MessageTypeDiscover, uefiPXE...)}},
			step: step{pkt: clientPacket(dhcpv4.MessageTypeRequest,
				append(uefiPXE, withRequested(net.IPv4(10, 77, 0, 100)), withServerID(testServer))...)}},
		{name: "full-renew-ack", cfg: testConfig(),
			setup: []step{{pkt: clientPacket(dhcpv4.MessageTypeDiscover, plain...)},
				{pkt: clientPacket(dhcpv4.MessageTypeRequest, append(plain, withRequested(net.IPv4(10, 77, 0, 100)), withServerID(testServer))...)}},
			step: step{pkt: clientPacket(dhcpv4.MessageTypeRequest, append(plain, dhcpv4.WithClientIP(net.IPv4(10, 77, 0, 100)))...),
				src: &net.UDPAddr{IP: net.IPv4(10, 77, 0, 100), Port: ClientPort}}},
		{name: "full-request-outside-pool-nak", cfg: testConfig(),
			step: step{pkt: clientPacket(dhcpv4.MessageTypeRequest, append(plain, withRequested(net.IPv4(10, 77, 0, 20)))...)}},
		{name: "full-inform-ack", cfg: testConfig(),
			step: step{pkt: clientPacket(dhcpv4.MessageTypeInform, append(plain, dhcpv4.WithClientIP(net.IPv4(10, 77, 0, 7)))...),
				src: &net.UDPAddr{IP: net.IPv4(10, 77, 0, 7), Port: ClientPort}}},
		{name: "relay-uefi-discover", cfg: testConfig(),
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, append(uefiPXE, withRelay(testRelayGi, "swp7", "leaf1"))...),
				src: &net.UDPAddr{IP: testRelayGi, Port: ServerPort}}},
		{name: "relay-request-nak", cfg: testConfig(),
			step: step{pkt: clientPacket(dhcpv4.MessageTypeRequest, append(plain, withRelay(testRelayGi, "swp7", "leaf1"),
				withRequested(net.IPv4(10, 77, 0, 100)))...),
				src: &net.UDPAddr{IP: testRelayGi, Port: ServerPort}}},
		{name: "proxy-bios-discover", cfg: proxyCfg,
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, biosPXE...)}},
		{name: "proxy-uefi-discover", cfg: proxyCfg,
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, uefiPXE...)}},
		{name: "proxy-uefi-http-discover", cfg: proxyCfg,
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, uefiHTTP...)}},
		{name: "proxy-ipxe-discover", cfg: proxyCfg,
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, ipxeBIOS...)}},
		{name: "proxy-uefi-4011-request", cfg: proxyCfg,
			step: step{pkt: clientPacket(dhcpv4.MessageTypeRequest, append(uefiPXE, dhcpv4.WithClientIP(net.IPv4(192, 168, 1, 50)))...),
				src: &net.UDPAddr{IP: net.IPv4(192, 168, 1, 50), Port: ClientPort}, proxyPort: true}},
		{name: "proxy-relay-bios-discover", cfg: proxyCfg,
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, append(biosPXE, withRelay(testRelayGi, "swp7", "leaf1"))...),
				src: &net.UDPAddr{IP: testRelayGi, Port: ServerPort}}},
		{name: "proxy-plain-discover", cfg: proxyCfg,
			step: step{pkt: clientPacket(dhcpv4.MessageTypeDiscover, plain...)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestServer(t, tt.cfg)
			for _, st := range tt.setup {
				handleBytes(s, st.pkt, st.src, st.proxyPort)
			}
			got := dump(handleBytes(s, tt.step.pkt, tt.step.src, tt.step.proxyPort))
			path := filepath.Join("testdata", tt.name+".golden")
			if *update {
				require.NoError(t, os.MkdirAll("testdata", 0o755))
				require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
				return
			}
			want, err := os.ReadFile(path)
			require.NoError(t, err, "missing golden file; run go test ./dhcp -run TestReplyGolden -update")
			assert.Equal(t, string(want), got)
		})
	}
}
