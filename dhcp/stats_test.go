package dhcp

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/lpmos/lpmos"
)

// Packets counts every handled packet once, by its type and outcome;
// DecisionLatency observes each; PoolUsage follows the lease table.
func TestPacketsLatencyAndPoolUsage(t *testing.T) {
	s := newTestServer(t, testConfig())
	assert.Equal(t, []PoolUsage{{Subnet: "10.77.0.0/24", Size: 100}, {Subnet: "10.88.0.0/24", Size: 100}}, s.PoolUsage())

	offer, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, biosPXE...), nil, false)
	require.NotNil(t, offer)
	ack, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, append(biosPXE, withRequested(offer.YourIPAddr), withServerID(testServer))...), nil, false)
	require.NotNil(t, ack)
	other, _ := handleBytes(s, clientPacket(dhcpv4.MessageTypeRequest, withMAC(testMAC2), withRequested(offer.YourIPAddr), withServerID(net.IPv4(10, 77, 0, 9))), nil, false)
	assert.Nil(t, other, "a REQUEST for another server is not answered")
	_, _ = s.handle(t.Context(), []byte("not DHCP"), nil, false)
	_, _ = handleBytes(s, clientPacket(dhcpv4.MessageTypeDiscover, withArch(lpmos.ArchEFIIA32), withVendor("PXEClient:Arch:00006")), nil, false)

	got := map[[2]string]uint64{}
	for _, c := range s.Packets() {
		if c.Count > 0 {
			got[[2]string{c.Type, string(c.Outcome)}] = c.Count
		}
	}
	assert.Equal(t, map[[2]string]uint64{
		{"discover", "answered"}: 1, {"request", "answered"}: 1, {"request", "not_for_us"}: 1,
		{"other", "malformed"}: 1, {"discover", "unsupported_arch"}: 1,
	}, got)
	assert.Len(t, s.Packets(), len(packetTypes)*len(outcomes), "every series, zero or not")

	h := s.DecisionLatency()
	assert.Equal(t, uint64(5), h.Count)
	require.Len(t, h.Buckets, len(LatencyBuckets))
	assert.LessOrEqual(t, h.Buckets[len(h.Buckets)-1], h.Count, "cumulative")
	assert.Positive(t, h.Sum)

	assert.Equal(t, []PoolUsage{{Subnet: "10.77.0.0/24", Size: 100, InUse: 1}, {Subnet: "10.88.0.0/24", Size: 100}}, s.PoolUsage())
	st := s.Stats()
	assert.Equal(t, uint64(1), st.Ignored)
	assert.Equal(t, uint64(1), st.Malformed)
	assert.Equal(t, uint64(1), st.UnsupportedArch)
}

func TestPoolUsageNilInProxyMode(t *testing.T) {
	cfg := testConfig()
	cfg.Mode = ModeProxy
	cfg.Pool, cfg.RelayPools = Pool{}, nil
	assert.Nil(t, newTestServer(t, cfg).PoolUsage())
}
