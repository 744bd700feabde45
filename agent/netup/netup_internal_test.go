package netup

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/rfc1035label"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The lease's DNS settings become resolv.conf, as u-root's dhclient wrote
// them.
func TestResolvConf(t *testing.T) {
	ack, err := dhcpv4.New(
		dhcpv4.WithOption(dhcpv4.OptDomainName("dc1.example")),
		dhcpv4.WithOption(dhcpv4.OptDNS(net.IPv4(10, 0, 0, 53), net.IPv4(10, 0, 1, 53))),
		dhcpv4.WithOption(dhcpv4.OptDomainSearch(&rfc1035label.Labels{Labels: []string{"dc1.example", "example"}})),
	)
	require.NoError(t, err)
	assert.Equal(t, "domain dc1.example\nnameserver 10.0.0.53\nnameserver 10.0.1.53\nsearch dc1.example example\n", string(resolvConf(ack)))

	empty, err := dhcpv4.New()
	require.NoError(t, err)
	assert.Empty(t, resolvConf(empty))
}

// The rtnetlink attributes are padded to 4 bytes, as the kernel expects.
func TestRtattr(t *testing.T) {
	b := rtattr([]byte{1, 2, 3, 4}, 7, []byte{10, 0, 0, 1, 9})
	require.Len(t, b, 4+12)
	assert.Equal(t, []byte{9, 0, 7, 0, 10, 0, 0, 1, 9, 0, 0, 0}, b[4:]) // length 4+5, type 7 (little endian)
}
