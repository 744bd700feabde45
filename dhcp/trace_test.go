package dhcp

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
)

// Config.Trace hears of every packet from a client: what it asked, what it
// was told, and why it was not answered.
func TestTraceTellsWhatBecameOfEachPacket(t *testing.T) {
	var traces []Trace
	cfg := testConfig()
	cfg.Policy = StaticPolicy{ScriptURL: testPolicy.ScriptURL, HTTPBaseURL: testPolicy.HTTPBaseURL,
		Allow: map[lpmos.MAC]bool{testMAC: true}}
	cfg.Trace = func(tr Trace) { traces = append(traces, tr) }
	s := newTestServer(t, cfg)
	last := func() Trace {
		require.NotEmpty(t, traces)
		return traces[len(traces)-1]
	}

	offer, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, biosPXE...), nil, false)
	require.NotNil(t, offer)
	got := last()
	assert.Equal(t, testMAC, got.MAC)
	assert.Equal(t, "discover", got.Type)
	assert.Equal(t, "offer", got.Reply)
	assert.Equal(t, lpmos.IPXEBinaryBIOS, got.BootFile)
	assert.Equal(t, OutcomeAnswered, got.Outcome)
	assert.Equal(t, offer.YourIPAddr.To4(), got.YourIP)
	assert.Equal(t, "PXEClient:Arch:00000:UNDI:002001", got.Request.VendorClass)
	assert.Empty(t, got.Reason)

	_, _ = handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, append(ipxeBIOS, withRelay(testRelayGi, "eth0", "sw1"))...), nil, false)
	got = last()
	assert.Equal(t, "iPXE", got.UserClass)
	assert.Equal(t, testRelayGi, got.Request.RelayAddr.To4())
	assert.Equal(t, "http://10.77.0.1:8081/boot/52:54:00:12:34:56.ipxe", got.BootFile)

	_, _ = handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, append(biosPXE, withMAC(testMAC2))...), nil, false)
	got = last()
	assert.Equal(t, testMAC2, got.MAC)
	assert.Equal(t, OutcomePolicyIgnored, got.Outcome)
	assert.Empty(t, got.Reply)
	assert.Equal(t, "not in the policy's allow list", got.Reason, "the policy's reason")

	_, _ = handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, withArch(lpmos.ArchEFIIA32), withVendor("PXEClient:Arch:00006")), nil, false)
	got = last()
	assert.Equal(t, OutcomeUnsupportedArch, got.Outcome)
	assert.Contains(t, got.Reason, "unsupported client architecture")

	_, _ = handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, withRequested(net.IPv4(10, 77, 0, 150)), withServerID(net.IPv4(10, 77, 0, 9))), nil, false)
	got = last()
	assert.Equal(t, OutcomeNotForUs, got.Outcome)
	assert.Equal(t, reasons[OutcomeNotForUs], got.Reason, "the server's reason")

	n := len(traces)
	_, _ = s.handle(t.Context(), []byte("not DHCP"), nil, false)
	assert.Len(t, traces, n, "a malformed packet names no machine")
}

func TestUserClass(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
	}{
		{nil, ""},
		{[]byte("iPXE"), "iPXE"},
		{[]byte{4, 'i', 'P', 'X', 'E', 3, 'f', 'o', 'o'}, "iPXE,foo"},
		{[]byte{0xff, 0}, "(2 bytes)"},
	} {
		assert.Equal(t, tc.want, userClass(tc.in), "%q", tc.in)
	}
}

func TestTraceSaysThePoolIsExhausted(t *testing.T) {
	var traces []Trace
	cfg := testConfig()
	cfg.Pool.End = cfg.Pool.Start // one address
	cfg.Trace = func(tr Trace) { traces = append(traces, tr) }
	s := newTestServer(t, cfg)
	offer, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, biosPXE...), nil, false)
	require.NotNil(t, offer)
	none, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, append(biosPXE, withMAC(testMAC2))...), nil, false)
	require.Nil(t, none)
	require.Len(t, traces, 2)
	assert.Equal(t, testMAC2, traces[1].MAC)
	assert.Equal(t, OutcomePoolExhausted, traces[1].Outcome)
	assert.Equal(t, "the address pool is exhausted", traces[1].Reason)
}
