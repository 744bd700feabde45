package dhcp

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
)

// dora runs DISCOVER then REQUEST for the offered address and returns the
// ACK (or the NAK, or nil when unanswered).
func dora(t *testing.T, s *Server, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	offer, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, mods...), nil, false)
	if offer == nil {
		return nil
	}
	require.Equal(t, dhcpv4.MessageTypeOffer, offer.MessageType())
	req := append(append([]dhcpv4.Modifier{}, mods...), withRequested(offer.YourIPAddr), withServerID(testServer))
	ack, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, req...), nil, false)
	return ack
}

func TestDescribe(t *testing.T) {
	tests := []struct {
		name string
		mods []dhcpv4.Modifier
		want Request
		err  error
	}{
		{"plain client is not booting", plain, Request{ClientID: append([]byte{1}, testMAC[:]...)}, nil},
		{"BIOS PXE", biosPXE, Request{Arch: lpmos.ArchBIOS, HasArch: true, Firmware: lpmos.FirmwareBIOS, IsPXE: true,
			VendorClass: "PXEClient:Arch:00000:UNDI:002001", UUID: testUUID}, nil},
		{"PXEClient without option 93 is BIOS", []dhcpv4.Modifier{withVendor("PXEClient")},
			Request{Arch: lpmos.ArchBIOS, Firmware: lpmos.FirmwareBIOS, IsPXE: true, VendorClass: "PXEClient"}, nil},
		{"option 93 alone makes a boot client", []dhcpv4.Modifier{withArch(lpmos.ArchEFIx64)},
			Request{Arch: lpmos.ArchEFIx64, HasArch: true, Firmware: lpmos.FirmwareUEFI}, nil},
		{"arch 9 is UEFI x64", uefiBC, Request{Arch: lpmos.ArchEFIBC, HasArch: true, Firmware: lpmos.FirmwareUEFI, IsPXE: true,
			VendorClass: "PXEClient:Arch:00009:UNDI:003016"}, nil},
		{"UEFI HTTP", uefiHTTP, Request{Arch: lpmos.ArchEFIx64HTTP, HasArch: true, Firmware: lpmos.FirmwareUEFIHTTP,
			IsHTTPClient: true, VendorClass: "HTTPClient:Arch:00016:UNDI:003001", UUID: testUUID}, nil},
		{"HTTPClient without option 93", []dhcpv4.Modifier{withVendor("HTTPClient")},
			Request{Arch: lpmos.ArchEFIx64HTTP, Firmware: lpmos.FirmwareUEFIHTTP, IsHTTPClient: true, VendorClass: "HTTPClient"}, nil},
		{"iPXE", ipxeBIOS, Request{Arch: lpmos.ArchBIOS, HasArch: true, Firmware: lpmos.FirmwareBIOS, IsPXE: true, IsIPXE: true,
			VendorClass: "PXEClient:Arch:00000:UNDI:002001"}, nil},
		{"iPXE user class in RFC 3004 form", []dhcpv4.Modifier{func(p *dhcpv4.DHCPv4) { p.Options[optUserClass] = []byte("\x03foo\x04iPXE") }},
			Request{Arch: lpmos.ArchBIOS, Firmware: lpmos.FirmwareBIOS, IsIPXE: true}, nil},
		{"list in option 93: first wins", []dhcpv4.Modifier{func(p *dhcpv4.DHCPv4) { p.Options[optClientArch] = []byte{0, 7, 0, 0} }},
			Request{Arch: lpmos.ArchEFIx64, HasArch: true, Firmware: lpmos.FirmwareUEFI}, nil},
		{"32-bit UEFI is unsupported", []dhcpv4.Modifier{withArch(lpmos.ArchEFIIA32)}, Request{}, errUnsupportedArch},
		{"unknown arch is unsupported", []dhcpv4.Modifier{withArch(42)}, Request{}, errUnsupportedArch},
		{"odd option 93 is malformed", []dhcpv4.Modifier{func(p *dhcpv4.DHCPv4) { p.Options[optClientArch] = []byte{7} }}, Request{}, errMalformed},
		{"relayed", []dhcpv4.Modifier{withRelay(testRelayGi, "a", "b")}, Request{RelayAddr: testRelayGi}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := describe(clientPacket(dhcpv4.MessageTypeDiscover, tt.mods...), testServer)
			if tt.err != nil {
				require.ErrorIs(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			tt.want.MAC, tt.want.ServerIP = testMAC, testServer
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestStaticPolicy(t *testing.T) {
	ctx := context.Background()
	base := Request{MAC: testMAC, ServerIP: testServer}
	with := func(f func(*Request)) Request { r := base; f(&r); return r }
	policy := func(f func(*StaticPolicy)) StaticPolicy { p := testPolicy; f(&p); return p }
	tests := []struct {
		name    string
		policy  StaticPolicy
		req     Request
		want    Decision
		wantErr string // substring of an error wrapping ErrInvalidConfig
	}{
		{name: "BIOS", policy: testPolicy, req: with(func(r *Request) { r.Firmware, r.IsPXE = lpmos.FirmwareBIOS, true }),
			want: Decision{BootFile: "undionly.kpxe"}},
		{name: "UEFI", policy: testPolicy, req: with(func(r *Request) { r.Firmware = lpmos.FirmwareUEFI }),
			want: Decision{BootFile: "snponly.efi"}},
		{name: "UEFI ipxe.efi", policy: policy(func(p *StaticPolicy) { p.UEFIFile = "ipxe.efi" }),
			req: with(func(r *Request) { r.Firmware = lpmos.FirmwareUEFI }), want: Decision{BootFile: "ipxe.efi"}},
		{name: "UEFI HTTP, {server} in the base", policy: testPolicy,
			req:  with(func(r *Request) { r.Firmware, r.IsHTTPClient = lpmos.FirmwareUEFIHTTP, true }),
			want: Decision{BootFile: "http://10.77.0.1:8081/snponly.efi"}},
		{name: "UEFI HTTP with a fixed base", policy: policy(func(p *StaticPolicy) { p.HTTPBaseURL = "http://region.example:9000/ipxe/" }),
			req: with(func(r *Request) { r.Firmware = lpmos.FirmwareUEFIHTTP }), want: Decision{BootFile: "http://region.example:9000/ipxe/snponly.efi"}},
		{name: "iPXE script, {server} and {mac}", policy: testPolicy, req: with(func(r *Request) { r.Firmware, r.IsIPXE = lpmos.FirmwareUEFI, true }),
			want: Decision{BootFile: "http://10.77.0.1:8081/boot/52:54:00:12:34:56.ipxe"}},
		{name: "iPXE template with ${mac}", policy: policy(func(p *StaticPolicy) { p.ScriptURL = "http://r:1/s?mac=${mac}" }),
			req: with(func(r *Request) { r.IsIPXE = true }), want: Decision{BootFile: "http://r:1/s?mac=52:54:00:12:34:56"}},
		{name: "ARM64 without a file", policy: testPolicy, req: with(func(r *Request) { r.Firmware = lpmos.FirmwareARM64 }), want: Decision{}},
		{name: "ARM64 with a file", policy: policy(func(p *StaticPolicy) { p.ARM64File = "ipxe-arm64.efi" }),
			req: with(func(r *Request) { r.Firmware = lpmos.FirmwareARM64HTTP }), want: Decision{BootFile: "http://10.77.0.1:8081/ipxe-arm64.efi"}},
		{name: "next server", policy: policy(func(p *StaticPolicy) { p.NextServer = net.IPv4(10, 0, 0, 9) }),
			req:  with(func(r *Request) { r.Firmware = lpmos.FirmwareBIOS }),
			want: Decision{BootFile: "undionly.kpxe", NextServer: net.IPv4(10, 0, 0, 9)}},
		{name: "not allowed", policy: policy(func(p *StaticPolicy) { p.Allow = map[lpmos.MAC]bool{testMAC2: true} }),
			req: with(func(r *Request) { r.Firmware = lpmos.FirmwareBIOS }), want: Decision{Ignore: true, Reason: "not in the policy's allow list"}},
		{name: "allowed", policy: policy(func(p *StaticPolicy) { p.Allow = map[lpmos.MAC]bool{testMAC: true} }),
			req: with(func(r *Request) { r.Firmware = lpmos.FirmwareBIOS }), want: Decision{BootFile: "undionly.kpxe"}},
		// Without URLs, PXE firmware is still answered over TFTP, but no
		// port or path is guessed for the clients that need a URL.
		{name: "no URLs, BIOS", policy: StaticPolicy{}, req: with(func(r *Request) { r.Firmware = lpmos.FirmwareBIOS }),
			want: Decision{BootFile: "undionly.kpxe"}},
		{name: "no script URL, iPXE", policy: StaticPolicy{}, req: with(func(r *Request) { r.IsIPXE = true }),
			wantErr: "StaticPolicy.ScriptURL is not set"},
		{name: "no base URL, UEFI HTTP", policy: StaticPolicy{}, req: with(func(r *Request) { r.Firmware = lpmos.FirmwareUEFIHTTP }),
			wantErr: "StaticPolicy.HTTPBaseURL is not set"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.policy.Boot(ctx, tt.req)
			if tt.wantErr != "" {
				require.ErrorIs(t, err, ErrInvalidConfig)
				assert.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestStaticPolicyValidate(t *testing.T) {
	tests := []struct {
		name    string
		policy  StaticPolicy
		wantErr string // "" means valid
	}{
		{"templates", testPolicy, ""},
		{"region's URLs", StaticPolicy{HTTPBaseURL: "https://region.example/boot/ipxe/",
			ScriptURL: "https://region.example/boot/{mac}.ipxe?platform=${platform}"}, ""},
		{"zero value", StaticPolicy{}, "StaticPolicy.ScriptURL is not set"},
		{"no base URL", StaticPolicy{ScriptURL: testPolicy.ScriptURL}, "StaticPolicy.HTTPBaseURL is not set"},
		{"no script URL", StaticPolicy{HTTPBaseURL: testPolicy.HTTPBaseURL}, "StaticPolicy.ScriptURL is not set"},
		{"script URL without scheme", StaticPolicy{HTTPBaseURL: testPolicy.HTTPBaseURL, ScriptURL: "region.example/boot/{mac}.ipxe"},
			"not an absolute http or https URL"},
		{"base URL without host", StaticPolicy{HTTPBaseURL: "http:///ipxe/", ScriptURL: testPolicy.ScriptURL},
			"not an absolute http or https URL"},
		{"tftp base URL", StaticPolicy{HTTPBaseURL: "tftp://{server}/", ScriptURL: testPolicy.ScriptURL},
			"not an absolute http or https URL"},
		{"unparsable", StaticPolicy{HTTPBaseURL: testPolicy.HTTPBaseURL, ScriptURL: "http://{server}:port/"}, "ScriptURL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.policy.Validate()
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrInvalidConfig)
			assert.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestConfigValidation(t *testing.T) {
	mod := func(f func(*Config)) Config { c := testConfig(); f(&c); return c }
	tests := []struct {
		name string
		cfg  Config
	}{
		{"bad mode", mod(func(c *Config) { c.Mode = "relay" })},
		{"no interface nor conn", Config{ServerIP: testServer, Mode: ModeFull}},
		{"start after end", mod(func(c *Config) { c.Pool.Start, c.Pool.End = c.Pool.End, c.Pool.Start })},
		{"range spans subnets", mod(func(c *Config) { c.Pool.End = net.IPv4(10, 77, 1, 5) })},
		{"range includes broadcast", mod(func(c *Config) { c.Pool.End = net.IPv4(10, 77, 0, 255) })},
		{"no netmask", mod(func(c *Config) { c.Pool.Netmask = nil })},
		{"router off subnet", mod(func(c *Config) { c.Pool.Router = net.IPv4(10, 1, 1, 1) })},
		{"relay pool overlaps", mod(func(c *Config) {
			c.RelayPools[0].Start, c.RelayPools[0].End = net.IPv4(10, 77, 0, 10), net.IPv4(10, 77, 0, 20)
		})},
		{"relay pool without mask", mod(func(c *Config) { c.RelayPools[0].Netmask = nil })},
		{"reservation off every subnet", mod(func(c *Config) { c.Reservations = map[lpmos.MAC]net.IP{testMAC: net.IPv4(10, 99, 0, 5)} })},
		{"reservation on server address", mod(func(c *Config) { c.Reservations = map[lpmos.MAC]net.IP{testMAC: testServer} })},
		{"duplicate reservation", mod(func(c *Config) {
			c.Reservations = map[lpmos.MAC]net.IP{testMAC: net.IPv4(10, 77, 0, 5), testMAC2: net.IPv4(10, 77, 0, 5)}
		})},
		{"proxy mode without a policy", Config{ServerIP: testServer, Mode: ModeProxy}},
		{"static policy without URLs", mod(func(c *Config) { c.Policy = StaticPolicy{} })},
		{"static policy without a script URL", mod(func(c *Config) { c.Policy = StaticPolicy{HTTPBaseURL: testPolicy.HTTPBaseURL} })},
		{"static policy pointer without URLs", mod(func(c *Config) { c.Policy = &StaticPolicy{} })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.cfg.Conn == nil && tt.name != "no interface nor conn" {
				tt.cfg.Conn = nopConn{}
			}
			_, err := New(tt.cfg)
			require.ErrorIs(t, err, ErrInvalidConfig)
		})
	}

	// Without a policy a full-mode server is a plain DHCP server: network-boot
	// clients get an address and no boot options rather than a guessed URL.
	cfg := testConfig()
	cfg.Policy = nil
	s := newTestServer(t, cfg)
	for _, mods := range [][]dhcpv4.Modifier{biosPXE, uefiHTTP, ipxeBIOS} {
		reply, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, mods...), nil, false)
		require.NotNil(t, reply)
		assert.Equal(t, dhcpv4.MessageTypeOffer, reply.MessageType())
		assert.Empty(t, reply.BootFileName)
		assert.Nil(t, reply.Options.Get(dhcpv4.OptionBootfileName))
	}

	mode, err := ParseMode(" FULL ")
	require.NoError(t, err)
	assert.Equal(t, ModeFull, mode)
	mode, err = ParseMode("")
	require.NoError(t, err)
	assert.Equal(t, ModeProxy, mode, "the zero mode never leases addresses")
}

func TestLeaseLifecycle(t *testing.T) {
	ip := func(last byte) net.IP { return net.IPv4(10, 77, 0, last).To4() }

	t.Run("same MAC keeps its address across DISCOVERs, boot stages and renewals", func(t *testing.T) {
		s := newTestServer(t, testConfig())
		ack := dora(t, s, uefiPXE...)
		require.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType())
		assert.Equal(t, ip(100), ack.YourIPAddr.To4())
		// iPXE and then the agent, from the same NIC, with other client IDs.
		assert.Equal(t, ip(100), dora(t, s, ipxeBIOS...).YourIPAddr.To4())
		assert.Equal(t, ip(100), dora(t, s, plain...).YourIPAddr.To4())
		// Another machine gets the next address.
		assert.Equal(t, ip(101), dora(t, s, withMAC(testMAC2)).YourIPAddr.To4())
		// Renewal (unicast, ciaddr) extends the same lease.
		renew, dst := handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(ip(100))),
			&net.UDPAddr{IP: ip(100), Port: ClientPort}, false)
		require.Equal(t, dhcpv4.MessageTypeAck, renew.MessageType())
		assert.Equal(t, ip(100), renew.YourIPAddr.To4())
		assert.Equal(t, &net.UDPAddr{IP: ip(100), Port: ClientPort}, dst)
	})

	t.Run("NAKs", func(t *testing.T) {
		s := newTestServer(t, testConfig())
		require.Equal(t, dhcpv4.MessageTypeAck, dora(t, s, withMAC(testMAC2)).MessageType()) // .100 is testMAC2's
		for _, tc := range []struct {
			name string
			mods []dhcpv4.Modifier
		}{
			{"address of another machine", []dhcpv4.Modifier{withRequested(ip(100))}},
			{"outside the range", []dhcpv4.Modifier{withRequested(ip(20))}},
			{"another subnet", []dhcpv4.Modifier{withRequested(net.IPv4(192, 168, 7, 7))}},
			{"the server's own address", []dhcpv4.Modifier{withRequested(testServer)}},
			{"the router's address", []dhcpv4.Modifier{withRequested(ip(254))}},
		} {
			reply, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, tc.mods...), nil, false)
			require.NotNil(t, reply, tc.name)
			assert.Equal(t, dhcpv4.MessageTypeNak, reply.MessageType(), tc.name)
		}
		// SELECTING with an address other than the one offered.
		offer, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover), nil, false)
		require.Equal(t, ip(101), offer.YourIPAddr.To4())
		reply, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, withRequested(ip(150)), withServerID(testServer)), nil, false)
		assert.Equal(t, dhcpv4.MessageTypeNak, reply.MessageType())
		assert.EqualValues(t, 6, s.Stats().Naks)
	})

	t.Run("REQUEST to another server frees the offer silently", func(t *testing.T) {
		cfg := testConfig()
		cfg.Pool.End = ip(100) // one address
		s := newTestServer(t, cfg)
		offer, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover), nil, false)
		require.Equal(t, ip(100), offer.YourIPAddr.To4())
		reply, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, withRequested(net.IPv4(10, 77, 0, 50)),
			withServerID(net.IPv4(10, 77, 0, 2))), nil, false)
		assert.Nil(t, reply)
		// The address is free for the next machine.
		assert.Equal(t, ip(100), dora(t, s, withMAC(testMAC2)).YourIPAddr.To4())
	})

	t.Run("offers expire", func(t *testing.T) {
		s := newTestServer(t, testConfig())
		offer, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover), nil, false)
		require.Equal(t, ip(100), offer.YourIPAddr.To4())
		offer2, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, withMAC(testMAC2)), nil, false)
		assert.Equal(t, ip(101), offer2.YourIPAddr.To4(), "an offered address is held")
		s.clock = func() time.Time { return testEpoch.Add(DefaultOfferTime + time.Second) }
		// After the offer time a new machine may get .100 once the cursor
		// wraps; the original MAC still gets it back first.
		assert.Equal(t, ip(100), dora(t, s).YourIPAddr.To4())
	})

	t.Run("RELEASE keeps the address for the machine", func(t *testing.T) {
		s := newTestServer(t, testConfig())
		require.Equal(t, ip(100), dora(t, s).YourIPAddr.To4())
		handleBytes(s, clientPacket(dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(ip(100)), withServerID(testServer)), nil, false)
		leases := s.Leases()
		require.Len(t, leases, 1)
		assert.Equal(t, LeaseReleased, leases[0].State)
		assert.Equal(t, ip(100), dora(t, s).YourIPAddr.To4())
		assert.EqualValues(t, 1, s.Stats().Releases)
	})

	t.Run("DECLINE takes the address out of the pool for a while", func(t *testing.T) {
		s := newTestServer(t, testConfig())
		require.Equal(t, ip(100), dora(t, s).YourIPAddr.To4())
		handleBytes(s, clientPacket(dhcpv4.MessageTypeDecline, withRequested(ip(100)), withServerID(testServer)), nil, false)
		assert.Equal(t, ip(101), dora(t, s).YourIPAddr.To4(), "the declined address is not offered again")
		assert.Equal(t, ip(102), dora(t, s, withMAC(testMAC2)).YourIPAddr.To4())
		leases := s.Leases()
		require.Len(t, leases, 3)
		assert.Equal(t, LeaseDeclined, leases[0].State)
		assert.True(t, leases[0].MAC.IsZero())
		// After the decline time, the address is usable again.
		s.clock = func() time.Time { return testEpoch.Add(DefaultDeclineTime + time.Second) }
		reply, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, withMAC(lpmos.MAC{2, 0, 0, 0, 0, 9}), withRequested(ip(100))), nil, false)
		assert.Equal(t, dhcpv4.MessageTypeAck, reply.MessageType())
	})

	t.Run("reservations", func(t *testing.T) {
		cfg := testConfig()
		cfg.Reservations = map[lpmos.MAC]net.IP{testMAC: ip(10), testMAC2: ip(100)}
		s := newTestServer(t, cfg)
		assert.Equal(t, ip(10), dora(t, s).YourIPAddr.To4(), "reserved address outside the range")
		other := lpmos.MAC{2, 0, 0, 0, 0, 1}
		assert.Equal(t, ip(101), dora(t, s, withMAC(other)).YourIPAddr.To4(), ".100 is reserved for testMAC2")
		assert.Equal(t, ip(100), dora(t, s, withMAC(testMAC2)).YourIPAddr.To4())
		reply, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, withRequested(ip(150))), nil, false)
		assert.Equal(t, dhcpv4.MessageTypeNak, reply.MessageType(), "a reserved machine gets only its address")
	})

	t.Run("exhaustion", func(t *testing.T) {
		cfg := testConfig()
		cfg.Pool.Start, cfg.Pool.End = ip(100), ip(101)
		s := newTestServer(t, cfg)
		dora(t, s)
		dora(t, s, withMAC(testMAC2))
		reply, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, withMAC(lpmos.MAC{2, 0, 0, 0, 0, 1})), nil, false)
		assert.Nil(t, reply)
		assert.EqualValues(t, 1, s.Stats().PoolExhausted)
	})

	t.Run("policy Ignore gets no answer, non-boot clients do", func(t *testing.T) {
		cfg := testConfig()
		policy := testPolicy
		policy.Allow = map[lpmos.MAC]bool{testMAC2: true}
		cfg.Policy = policy
		s := newTestServer(t, cfg)
		reply, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, uefiPXE...), nil, false)
		assert.Nil(t, reply, "unknown machine booting: ignored")
		reply, _ = handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, plain...), nil, false)
		require.NotNil(t, reply, "the same machine's OS gets a lease")
		assert.Empty(t, reply.BootFileName)
		assert.EqualValues(t, 1, s.Stats().Ignored)
	})

	t.Run("policy errors drop the packet", func(t *testing.T) {
		cfg := testConfig()
		cfg.Policy = BootPolicyFunc(func(context.Context, Request) (Decision, error) { return Decision{}, errors.New("store down") })
		s := newTestServer(t, cfg)
		reply, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, biosPXE...), nil, false)
		assert.Nil(t, reply)
		assert.EqualValues(t, 1, s.Stats().PolicyErrors)
	})
}

func TestRelayPools(t *testing.T) {
	s := newTestServer(t, testConfig())
	src := &net.UDPAddr{IP: testRelayGi, Port: ServerPort}
	relay1 := withRelay(testRelayGi, "swp7", "leaf1")
	relay2 := withRelay(net.IPv4(10, 88, 0, 3), "swp7", "leaf2")

	offer1, dst1 := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, append(uefiPXE, relay1)...), src, false)
	offer2, dst2 := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, append(uefiPXE, relay2)...), src, false)
	require.NotNil(t, offer1)
	require.NotNil(t, offer2)
	assert.Equal(t, net.IPv4(10, 88, 0, 100).To4(), offer1.YourIPAddr.To4(), "pool chosen by the relay's subnet")
	assert.Equal(t, offer1.YourIPAddr, offer2.YourIPAddr, "duplicate request through a second relay: same answer")
	assert.Equal(t, &net.UDPAddr{IP: testRelayGi, Port: ServerPort}, dst1)
	assert.Equal(t, &net.UDPAddr{IP: net.IPv4(10, 88, 0, 3).To4(), Port: ServerPort}, dst2)

	ack, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, append(uefiPXE, relay2, withRequested(offer1.YourIPAddr), withServerID(testServer))...), src, false)
	require.Equal(t, dhcpv4.MessageTypeAck, ack.MessageType())
	assert.Equal(t, offer1.YourIPAddr, ack.YourIPAddr)

	reply, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, withMAC(testMAC2), withRelay(net.IPv4(172, 16, 5, 1), "x", "y")), src, false)
	assert.Nil(t, reply, "relay from a subnet without a pool")
	assert.EqualValues(t, 1, s.Stats().NoPool)
}

func TestProxyMode(t *testing.T) {
	s := newTestServer(t, Config{ServerIP: testServer, Mode: ModeProxy, Policy: testPolicy})
	// A REQUEST on port 67 is for the DHCP server, unless addressed to us.
	reply, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, append(biosPXE, withRequested(net.IPv4(10, 77, 0, 50)),
		withServerID(net.IPv4(10, 77, 0, 2)))...), nil, false)
	assert.Nil(t, reply)
	reply, _ = handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, append(biosPXE, withServerID(testServer))...), nil, false)
	require.NotNil(t, reply)
	assert.Equal(t, dhcpv4.MessageTypeAck, reply.MessageType())
	assert.True(t, reply.YourIPAddr.IsUnspecified(), "ProxyDHCP never leases")
	// DISCOVER on 4011 is not a ProxyDHCP message.
	reply, _ = handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, biosPXE...), &net.UDPAddr{IP: net.IPv4(10, 77, 0, 9), Port: 68}, true)
	assert.Nil(t, reply)
	assert.Nil(t, s.Leases())
}

func TestLeasedAddr(t *testing.T) {
	ip := func(last byte) net.IP { return net.IPv4(10, 77, 0, last).To4() }
	s := newTestServer(t, testConfig())
	_, ok := s.LeasedAddr(testMAC)
	assert.False(t, ok, "no lease yet")
	offer, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover), nil, false)
	require.Equal(t, ip(100), offer.YourIPAddr.To4())
	_, ok = s.LeasedAddr(testMAC)
	assert.False(t, ok, "an offer is not a lease")
	require.Equal(t, ip(100), dora(t, s).YourIPAddr.To4())
	got, ok := s.LeasedAddr(testMAC)
	require.True(t, ok)
	assert.Equal(t, ip(100), got.To4())
	_, ok = s.LeasedAddr(testMAC2)
	assert.False(t, ok, "another machine has no lease")
	handleBytes(s, clientPacket(dhcpv4.MessageTypeRelease, dhcpv4.WithClientIP(ip(100)), withServerID(testServer)), nil, false)
	_, ok = s.LeasedAddr(testMAC)
	assert.False(t, ok, "a released lease is no lease")

	proxy := newTestServer(t, Config{ServerIP: testServer, Mode: ModeProxy, Policy: testPolicy})
	_, ok = proxy.LeasedAddr(testMAC)
	assert.False(t, ok, "ProxyDHCP leases nothing")
}

func TestLeaseFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.LeaseFile = filepath.Join(dir, "leases.json")
	s := newTestServer(t, cfg)
	require.Equal(t, dhcpv4.MessageTypeAck, dora(t, s).MessageType())
	require.Equal(t, dhcpv4.MessageTypeAck, dora(t, s, withMAC(testMAC2)).MessageType())
	handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, withMAC(lpmos.MAC{2, 0, 0, 0, 0, 3})), nil, false) // only offered: not saved
	require.NoError(t, s.leases.save(cfg.LeaseFile))

	var f leaseFile
	b, err := os.ReadFile(cfg.LeaseFile)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &f))
	assert.Equal(t, 1, f.Version)
	require.Len(t, f.Leases, 2)
	assert.Equal(t, testMAC, f.Leases[0].MAC)
	assert.Equal(t, LeaseBound, f.Leases[0].State)

	// A new server over the same file: the machines keep their addresses,
	// a newcomer does not get them.
	s2 := newTestServer(t, cfg)
	assert.Equal(t, net.IPv4(10, 77, 0, 102).To4(), dora(t, s2, withMAC(lpmos.MAC{2, 0, 0, 0, 0, 4})).YourIPAddr.To4())
	assert.Equal(t, net.IPv4(10, 77, 0, 101).To4(), dora(t, s2, withMAC(testMAC2)).YourIPAddr.To4())
	assert.Equal(t, net.IPv4(10, 77, 0, 100).To4(), dora(t, s2).YourIPAddr.To4())

	// Leases that no longer fit are dropped, not fatal.
	cfg.Pool.Start, cfg.Pool.End = net.IPv4(10, 77, 0, 101), net.IPv4(10, 77, 0, 150)
	cfg.Reservations = map[lpmos.MAC]net.IP{{2, 0, 0, 0, 0, 4}: net.IPv4(10, 77, 0, 102)}
	s3 := newTestServer(t, cfg)
	assert.Len(t, s3.Leases(), 1)

	require.NoError(t, os.WriteFile(cfg.LeaseFile, []byte("{not json"), 0o644))
	_, err = New(cfg)
	assert.Error(t, err, "a corrupt lease file is an error, not silently empty")
}

// malformedPackets are inputs the server must drop without answering.
func malformedPackets() map[string][]byte {
	good := clientPacket(dhcpv4.MessageTypeDiscover, biosPXE...).ToBytes()
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	return map[string][]byte{
		"empty":                {},
		"one byte":             {1},
		"truncated header":     good[:100],
		"header only":          good[:236],
		"bad cookie":           mutate(func(b []byte) []byte { b[236] = 0; return b }),
		"reply op code":        mutate(func(b []byte) []byte { b[0] = 2; return b }),
		"op code 7":            mutate(func(b []byte) []byte { b[0] = 7; return b }),
		"hlen 16":              mutate(func(b []byte) []byte { b[2] = 16; return b }),
		"hlen 0":               mutate(func(b []byte) []byte { b[2] = 0; return b }),
		"infiniband htype":     mutate(func(b []byte) []byte { b[1] = 32; return b }),
		"zero MAC":             mutate(func(b []byte) []byte { copy(b[28:34], make([]byte, 6)); return b }),
		"broadcast MAC":        mutate(func(b []byte) []byte { copy(b[28:34], []byte{255, 255, 255, 255, 255, 255}); return b }),
		"no message type":      append(good[:240:240], 255),
		"bootp, no options":    good[:240],
		"message type OFFER":   clientPacket(dhcpv4.MessageTypeOffer).ToBytes(),
		"message type 99":      append(append(good[:240:240], 53, 1, 99), 255),
		"message type len 2":   append(append(good[:240:240], 53, 2, 1, 1), 255),
		"option runs past end": append(append(good[:240:240], 53, 1, 1, 60, 200, 'P', 'X', 'E'), 255),
		"no end option":        append(good[:240:240], 53, 1, 1),
		"odd option 93":        append(append(good[:240:240], 53, 1, 1, 93, 1, 7), 255),
	}
}

func TestMalformedPacketsDropped(t *testing.T) {
	for _, mode := range []Mode{ModeFull, ModeProxy} {
		cfg := testConfig()
		cfg.Mode = mode
		s := newTestServer(t, cfg)
		pkts := malformedPackets()
		for name, b := range pkts {
			for _, proxyPort := range []bool{false, true} {
				reply, _ := s.handle(context.Background(), b, &net.UDPAddr{IP: net.IPv4zero, Port: 68}, proxyPort)
				assert.Nil(t, reply, "%s: %s", mode, name)
			}
		}
		st := s.Stats()
		assert.EqualValues(t, 2*len(pkts), st.Malformed, "%s: every malformed packet is counted", mode)
		assert.Zero(t, st.Offers+st.Acks+st.Naks)
	}
}

// FuzzHandlePacket feeds arbitrary bytes to the packet handler in both
// modes and on both ports: it must never panic, and what it answers must be
// a reply that decodes.
func FuzzHandlePacket(f *testing.F) {
	for _, b := range malformedPackets() {
		f.Add(b)
	}
	for _, mods := range [][]dhcpv4.Modifier{biosPXE, uefiPXE, uefiHTTP, ipxeBIOS, plain,
		append(uefiPXE, withRelay(testRelayGi, "a", "b"))} {
		f.Add(clientPacket(dhcpv4.MessageTypeDiscover, mods...).ToBytes())
		f.Add(clientPacket(dhcpv4.MessageTypeRequest, append(mods, withRequested(net.IPv4(10, 77, 0, 100)))...).ToBytes())
	}
	full := newTestServer(f, testConfig())
	proxy := newTestServer(f, Config{ServerIP: testServer, Mode: ModeProxy, Policy: testPolicy})
	src := &net.UDPAddr{IP: net.IPv4(10, 77, 0, 5), Port: 68}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, s := range []*Server{full, proxy} {
			for _, port := range []bool{false, true} {
				reply, dst := s.handle(context.Background(), b, src, port)
				if reply == nil {
					continue
				}
				if dst == nil {
					t.Fatal("reply without destination")
				}
				if _, err := dhcpv4.FromBytes(reply.ToBytes()); err != nil {
					t.Fatalf("reply does not decode: %v", err)
				}
			}
		}
	})
}

// BenchmarkHandleDORA measures the handler alone (decode, lease table,
// encode) for a full DORA of a PXE client, over 50,000 machines on a /16.
func BenchmarkHandleDORA(b *testing.B) {
	cfg := testConfig()
	cfg.Pool = Pool{Start: net.IPv4(10, 77, 1, 0), End: net.IPv4(10, 77, 254, 254), Netmask: net.CIDRMask(16, 32)}
	cfg.RelayPools = nil
	s := newTestServer(b, cfg)
	ctx := context.Background()
	src := &net.UDPAddr{IP: net.IPv4zero, Port: ClientPort}
	discover := clientPacket(dhcpv4.MessageTypeDiscover, uefiPXE...)
	request := clientPacket(dhcpv4.MessageTypeRequest, append(uefiPXE, withServerID(testServer))...)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		mac := lpmos.MAC{2, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}
		if i >= 50000 {
			mac[3], mac[4], mac[5] = byte(i%50000>>16), byte(i%50000>>8), byte(i%50000)
		}
		discover.ClientHWAddr = mac.HardwareAddr()
		offer, _ := s.handle(ctx, discover.ToBytes(), src, false)
		if offer == nil {
			b.Fatal("no offer")
		}
		request.ClientHWAddr = discover.ClientHWAddr
		request.UpdateOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr))
		if ack, _ := s.handle(ctx, request.ToBytes(), src, false); ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck {
			b.Fatal("no ACK")
		}
	}
}
