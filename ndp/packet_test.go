package ndp

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var testMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

func TestRouterAdvertisementGolden(t *testing.T) {
	tests := []struct {
		name string
		mac  net.HardwareAddr
		want []byte
	}{
		{"ethernet: with source link-layer address", testMAC, []byte{
			134, 0, 0, 0, // type RA, code 0, checksum (the kernel's)
			0, 0, 0, 0, // cur hop limit 0, M=0 O=0, router lifetime 0
			0, 0, 0, 0, // reachable time 0
			0, 0, 0, 0, // retrans timer 0
			1, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // option 1, 8 bytes, MAC
		}},
		{"no ethernet address: header only", nil, []byte{
			134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		}},
		{"not six bytes: no option", net.HardwareAddr{1, 2, 3, 4, 5, 6, 7, 8}, []byte{
			134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := RouterAdvertisement(tt.mac)
			assert.Equal(t, tt.want, got)
			// What iPXE's ipv6conf_rx_router_advertisement looks at.
			assert.Zero(t, got[5]&0xc0, "M and O must be 0: iPXE would start DHCPv6 and keep waiting")
			assert.Zero(t, binary.BigEndian.Uint16(got[6:8]), "router lifetime must be 0")
			assert.Zero(t, len(got)%8, "NDP options are in units of 8 bytes")
		})
	}
}

// iPXE's solicitation (ndp_tx_router_solicitation): an empty RS with its
// source link-layer address option.
var ipxeRS = []byte{133, 0, 0xab, 0xcd, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56}

func TestParseRouterSolicitation(t *testing.T) {
	linkLocal := net.ParseIP("fe80::5054:ff:fe12:3456")
	tests := []struct {
		name    string
		b       []byte
		src     net.IP
		hop     int
		wantLL  net.HardwareAddr
		wantErr bool
	}{
		{name: "iPXE's", b: ipxeRS, src: linkLocal, hop: 255, wantLL: testMAC},
		{name: "no options", b: ipxeRS[:8], src: linkLocal, hop: 255},
		{name: "from :: without link-layer option", b: ipxeRS[:8], src: net.IPv6unspecified, hop: 255},
		{name: "unknown option skipped", b: append(append([]byte{}, ipxeRS[:8]...), 99, 1, 0, 0, 0, 0, 0, 0), src: linkLocal, hop: 255},
		{name: "from :: with link-layer option", b: ipxeRS, src: net.IPv6unspecified, hop: 255, wantErr: true},
		{name: "hop limit 64 (crossed a router)", b: ipxeRS, src: linkLocal, hop: 64, wantErr: true},
		{name: "hop limit unknown", b: ipxeRS, src: linkLocal, hop: -1, wantErr: true},
		{name: "empty", b: nil, src: linkLocal, hop: 255, wantErr: true},
		{name: "short", b: ipxeRS[:7], src: linkLocal, hop: 255, wantErr: true},
		{name: "an RA", b: RouterAdvertisement(testMAC), src: linkLocal, hop: 255, wantErr: true},
		{name: "code 1", b: append([]byte{133, 1}, ipxeRS[2:]...), src: linkLocal, hop: 255, wantErr: true},
		{name: "zero-length option", b: append(append([]byte{}, ipxeRS[:8]...), 1, 0, 0, 0, 0, 0, 0, 0), src: linkLocal, hop: 255, wantErr: true},
		{name: "option longer than the packet", b: append(append([]byte{}, ipxeRS[:8]...), 1, 2, 0, 0, 0, 0, 0, 0), src: linkLocal, hop: 255, wantErr: true},
		{name: "one byte of option", b: append(append([]byte{}, ipxeRS...), 1), src: linkLocal, hop: 255, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseRouterSolicitation(tt.b, tt.src, tt.hop)
			if tt.wantErr {
				require.Error(t, err)
				assert.True(t, errors.Is(err, ErrMalformed), "%v should wrap ErrMalformed", err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.wantLL, s.LinkLayerAddr)
		})
	}
}

// Whatever arrives, parsing neither panics nor accepts a packet that is not
// a router solicitation.
func FuzzParseRouterSolicitation(f *testing.F) {
	f.Add(ipxeRS, 255)
	f.Add(RouterAdvertisement(testMAC), 255)
	f.Add([]byte{133, 0, 0, 0, 0, 0, 0, 0, 1}, 255)
	f.Fuzz(func(t *testing.T, b []byte, hop int) {
		_, err := ParseRouterSolicitation(b, net.ParseIP("fe80::1"), hop)
		if err == nil && (len(b) < 8 || b[0] != 133 || hop != 255) {
			t.Fatalf("accepted %x (hop limit %d)", b, hop)
		}
	})
}

func TestNewConfig(t *testing.T) {
	_, err := New(Config{})
	require.ErrorIs(t, err, ErrInvalidConfig)

	s, err := New(Config{Interface: "eth1"})
	require.NoError(t, err)
	assert.Equal(t, DefaultUnsolicited, s.cfg.Unsolicited)
	assert.Equal(t, DefaultUnsolicitedInterval, s.cfg.UnsolicitedInterval)
	assert.Equal(t, DefaultMinInterval, s.cfg.MinInterval)

	s, err = New(Config{Interface: "eth1", Unsolicited: -1})
	require.NoError(t, err)
	assert.Equal(t, -1, s.cfg.Unsolicited, "negative means none")
}
